#!/usr/bin/env bash
# make repro-check: is the enclave image reproducible? Builds it twice from clean copies of one
# commit (default HEAD; REPRO_REV=REV for another), in two directories of different names and
# depths, with different umasks, each with its own target directory (the cargo registry is
# shared), and compares the outputs byte for byte: the enclave binary, the init, the ramdisk(s),
# pcrs.json, the trust-file measurement and, with NITRO_BLOBS=DIR, the EIF. ENCLAVE_CONFIG=FILE,
# KMS_KEY_ARN and AWS_REGION are passed on to both builds (scripts/enclave-image.sh).
#
# Exit 0 when all are identical; 1 with the differing files' hashes otherwise. REPRO_KEEP=1 keeps
# the two trees (printed) for inspection. Uncommitted changes are not part of the check.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd -P)
rev=$(git rev-parse --verify "${REPRO_REV:-HEAD}^{commit}")
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    echo "repro-check: note: uncommitted changes are ignored; checking commit $rev"
fi
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct "$rev")}
export CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
export COSIGNER_SOURCE_REV=$rev
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR ENCLAVE_OUT
# The builds run elsewhere: make the optional inputs absolute.
for var in NITRO_BLOBS ENCLAVE_CONFIG; do
    if [ -n "${!var:-}" ]; then
        export "$var=$(realpath "${!var}")"
    fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/cosigner-repro.XXXXXX")
if [ -z "${REPRO_KEEP:-}" ]; then
    trap 'rm -rf "$work"' EXIT
fi
trees=("$work/a" "$work/second-build/b-with-a-longer-name")
umasks=(022 077)

t0=$(date +%s)
for i in 0 1; do
    tree=${trees[$i]}
    mkdir -p "$tree"
    git archive --format=tar "$rev" | tar -x -C "$tree"
    echo "repro-check: build $((i + 1))/2 of $rev in $tree (umask ${umasks[$i]})"
    start=$(date +%s)
    (cd "$tree" && umask "${umasks[$i]}" && ./scripts/enclave-image.sh) > "$work/build-$i.log" 2>&1 || {
        echo "repro-check: build $((i + 1)) failed; its last lines:" >&2
        tail -20 "$work/build-$i.log" >&2
        exit 1
    }
    echo "repro-check: build $((i + 1)) took $(( $(date +%s) - start )) s"
done

artifacts=(target/enclave/cosigner-enclave target/x86_64-unknown-linux-gnu/release/cosigner-init
           target/enclave/ramdisk-app.cpio target/enclave/pcrs.json target/enclave/trust-measurement.toml)
if [ -n "${NITRO_BLOBS:-}" ]; then
    artifacts+=(target/enclave/ramdisk-bootstrap.cpio target/enclave/cosigner-enclave.eif)
fi

differ=0
for f in "${artifacts[@]}"; do
    a=${trees[0]}/$f
    b=${trees[1]}/$f
    if [ ! -f "$a" ] || [ ! -f "$b" ]; then
        echo "repro-check: MISSING $f" >&2
        differ=1
        continue
    fi
    ha=$(sha256sum "$a" | cut -d' ' -f1)
    hb=$(sha256sum "$b" | cut -d' ' -f1)
    if [ "$ha" = "$hb" ]; then
        printf 'repro-check: identical %-52s %10s bytes  sha256 %s\n' "$f" "$(stat -c %s "$a")" "$ha"
    else
        differ=1
        echo "repro-check: DIFFERENT $f" >&2
        echo "    build 1: sha256 $ha  $(stat -c %s "$a") bytes" >&2
        echo "    build 2: sha256 $hb  $(stat -c %s "$b") bytes" >&2
        echo "    first differing bytes (offset, octal 1, octal 2):" >&2
        cmp -l "$a" "$b" 2>/dev/null | head -5 | sed 's/^/      /' >&2 || true
    fi
done
echo "repro-check: $(( $(date +%s) - t0 )) s in all"
if [ "$differ" != 0 ]; then
    echo "repro-check: FAILED: the image is not reproducible (trees kept in $work)" >&2
    trap - EXIT
    exit 1
fi
echo "repro-check: OK: both builds are byte-identical (PCR2 $(sed -n 's/.*"PCR2": "\(.*\)".*/\1/p' "${trees[0]}/target/enclave/pcrs.json"))"
[ -n "${REPRO_KEEP:-}" ] && echo "repro-check: trees kept in $work"
exit 0
