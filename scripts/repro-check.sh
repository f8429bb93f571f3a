#!/usr/bin/env bash
# make repro-check: is the enclave image reproducible? Builds it twice from clean copies of one
# commit (default HEAD; REPRO_REV=REV for another), in two directories of different names and
# depths, with different umasks, each with its own target directory (the cargo registry is
# shared), and compares the outputs byte for byte: the enclave binary, the init, the ramdisk(s),
# pcrs.json, the trust-file measurement and, with NITRO_BLOBS=DIR, the EIF. ENCLAVE_CONFIG=FILE,
# KMS_KEY_ARN and AWS_REGION are passed on to both builds (scripts/enclave-image.sh). The packer
# (cosigner-image, a host tool) is built once for both when this checkout has its sources.
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
# The builds run elsewhere: make the optional inputs absolute.
for var in NITRO_BLOBS ENCLAVE_CONFIG; do
    if [ -n "${!var:-}" ]; then
        export "$var=$(realpath "${!var}")"
    fi
done

# The packer (cosigner-image build) is a host tool, not part of the image: when this
# checkout has the commit's sources for it, it is built here once (a no-op after `make build`, as
# in CI) and both trees use it. Each tree still builds the enclave and the init from scratch and
# packs them itself, in its own directory and umask. Otherwise each tree builds its own.
packer_sources=(image Cargo.toml Cargo.lock)
if [ -z "${COSIGNER_PACKER:-}" ] && git diff --quiet "$rev" -- "${packer_sources[@]}" 2>/dev/null \
    && [ -z "$(git ls-files --others --exclude-standard -- "${packer_sources[@]}")" ]; then
    echo "repro-check: packer: this checkout's cosigner-image (its sources are those of $rev)"
    # Without SOURCE_DATE_EPOCH, as `make build` built it: some build scripts rerun when it changes.
    env -u SOURCE_DATE_EPOCH "${CARGO:-cargo}" build --locked -p cosigner-image \
        --bin cosigner-image >/dev/null 2>&1 || {
        echo "repro-check: building the packer failed: cargo build -p cosigner-image" >&2
        exit 1
    }
    COSIGNER_PACKER=$(realpath "${CARGO_TARGET_DIR:-target}/debug/cosigner-image")
    export COSIGNER_PACKER
fi
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR ENCLAVE_OUT
work=$(mktemp -d "${TMPDIR:-/tmp}/cosigner-repro.XXXXXX")
if [ -z "${REPRO_KEEP:-}" ]; then
    trap 'rm -rf "$work"' EXIT
fi
trees=("$work/a" "$work/second-build/b-with-a-longer-name")
umasks=(022 077)

artifacts=(target/enclave/cosigner-enclave target/x86_64-unknown-linux-gnu/release/cosigner-init
           target/enclave/ramdisk-app.cpio target/enclave/pcrs.json target/enclave/trust-measurement.toml)
if [ -n "${NITRO_BLOBS:-}" ]; then
    artifacts+=(target/enclave/ramdisk-bootstrap.cpio target/enclave/cosigner-enclave.eif)
fi

# Each build's outputs are copied to out-N; its target directory (~400 MB) is removed at once
# unless REPRO_KEEP is set, so the check needs room for one build at a time.
outs=("$work/out-0" "$work/out-1")
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
    for f in "${artifacts[@]}"; do
        if [ -f "$tree/$f" ]; then
            mkdir -p "$(dirname "${outs[$i]}/$f")"
            cp -p "$tree/$f" "${outs[$i]}/$f"
        fi
    done
    [ -n "${REPRO_KEEP:-}" ] || rm -rf "$tree/target"
done

differ=0
for f in "${artifacts[@]}"; do
    a=${outs[0]}/$f
    b=${outs[1]}/$f
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
    echo "repro-check: FAILED: the image is not reproducible (outputs and logs kept in $work)" >&2
    trap - EXIT
    exit 1
fi
echo "repro-check: OK: both builds are byte-identical (PCR2 $(sed -n 's/.*"PCR2": "\(.*\)".*/\1/p' "${outs[0]}/target/enclave/pcrs.json"))"
[ -n "${REPRO_KEEP:-}" ] && echo "repro-check: trees kept in $work"
exit 0
