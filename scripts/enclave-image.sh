#!/usr/bin/env bash
# make enclave-image: the reproducible Nitro Enclave image of cosigner-enclave (docs/nitro.md).
#
#   1. cosigner-enclave (features: nitro, not local-attester) and cosigner-init, release,
#      statically linked against glibc, with no host path, timestamp or debug information inside;
#   2. checks that both are static and free of host paths;
#   3. cosigner-image build: the deterministic ramdisk(s), pcrs.json, the trust-file
#      measurement and, with NITRO_BLOBS=DIR (bzImage, bzImage.config, cmdline, nsm.ko from
#      aws-nitro-enclaves-cli), the EIF with all three PCRs.
#
# Environment: SOURCE_DATE_EPOCH (default: the last commit's time), NITRO_BLOBS, KMS_KEY_ARN and
# AWS_REGION (the KMS key the built-in configuration seals under; measured in PCR2; without
# KMS_KEY_ARN a placeholder, for a reference image that will not start in an enclave),
# ENCLAVE_CONFIG (a deployment's whole enclave.toml to bake in instead; not with KMS_KEY_ARN;
# one with [sealer] tls_roots only with ALLOW_PRIVATE_KMS_ROOTS=1, for emulator or test images),
# ENCLAVE_OUT (default target/enclave), CARGO. Everything else that could leak into the bytes is
# fixed here.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd -P)
cargo=${CARGO:-cargo}
target=x86_64-unknown-linux-gnu
out=${ENCLAVE_OUT:-target/enclave}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
cargo_home=$(cd "$cargo_home" && pwd -P)

# The packer (cosigner-image build) is a host tool, built first in the caller's environment so
# that `make build`'s debug build is reused: several build scripts (ring, openssl-sys) rebuild
# when SOURCE_DATE_EPOCH changes.
# COSIGNER_PACKER: a cosigner-image built elsewhere from the same sources (make repro-check
# builds one for both of its trees; the packer is not part of the image).
start=$(date +%s)
if [ -n "${COSIGNER_PACKER:-}" ]; then
    packer=$COSIGNER_PACKER
else
    "$cargo" build --locked -p cosigner-image --bin cosigner-image
    packer=target/debug/cosigner-image
fi

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null) || {
        echo "enclave-image: not a git checkout: set SOURCE_DATE_EPOCH (the published one, to reproduce an image)" >&2
        exit 1
    }
fi
export SOURCE_DATE_EPOCH
export TZ=UTC LC_ALL=C
export CARGO_INCREMENTAL=0
# The target's own flags only: with --target, RUSTFLAGS do not reach build scripts and proc
# macros (which cannot be static). Paths are remapped to fixed prefixes; the profile drops
# debug information and symbols; one codegen unit makes the optimiser's partitioning fixed.
export RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$root=/src"
export CARGO_PROFILE_RELEASE_DEBUG=false
export CARGO_PROFILE_RELEASE_STRIP=symbols
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
export CARGO_PROFILE_RELEASE_LTO=false
# C code compiled by build scripts (aws-lc-sys) for the target: the same remapping.
export CFLAGS_x86_64_unknown_linux_gnu="-ffile-prefix-map=$cargo_home=/cargo -ffile-prefix-map=$root=/src"
unset CARGO_BUILD_TARGET CARGO_ENCODED_RUSTFLAGS

if [ -n "${ENCLAVE_CONFIG:-}" ]; then
    echo "enclave-image: configuration: $ENCLAVE_CONFIG"
    # [sealer] tls_roots lets whoever holds those roots answer as KMS (docs/kms.md): only the
    # emulator's images carry it, and they say so.
    python3 -c 'import tomllib' 2> /dev/null || {
        echo "enclave-image: ENCLAVE_CONFIG is checked with Python's tomllib (Python 3.11 or later)" >&2; exit 1; }
    private_roots=$(python3 -c 'import sys, tomllib; print(len(tomllib.load(open(sys.argv[1], "rb")).get("sealer", {}).get("tls_roots", [])))' "$ENCLAVE_CONFIG") || {
        echo "enclave-image: $ENCLAVE_CONFIG is not readable TOML" >&2; exit 1; }
    if [ "$private_roots" != 0 ] && [ "${ALLOW_PRIVATE_KMS_ROOTS:-}" != 1 ]; then
        echo "enclave-image: $ENCLAVE_CONFIG has [sealer] tls_roots: whoever holds them can answer as KMS; not for a deployment (ALLOW_PRIVATE_KMS_ROOTS=1 for an emulator or test image)" >&2
        exit 1
    fi
elif [ -n "${KMS_KEY_ARN:-}" ]; then
    echo "enclave-image: configuration: built-in, sealing under $KMS_KEY_ARN"
else
    echo "enclave-image: configuration: built-in with the PLACEHOLDER KMS key (KMS_KEY_ARN not set):"
    echo "  a reproducible reference image that refuses to start in an enclave; for a deployment,"
    echo "  KMS_KEY_ARN=arn:aws:kms:REGION:ACCOUNT:key/ID make enclave-image (docs/nitro.md)"
fi
echo "enclave-image: building cosigner-enclave and cosigner-init (static, nitro) at SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH"
"$cargo" build --locked --release --target "$target" -p cosigner-enclave \
    --no-default-features --features nitro --bin cosigner-enclave --bin cosigner-init

bin_dir=target/$target/release
for bin in cosigner-enclave cosigner-init; do
    path=$bin_dir/$bin
    description=$(file -b "$path")
    case "$description" in
        *"statically linked"*|*"static-pie linked"*) ;;
        *) echo "enclave-image: $path is not statically linked: $description" >&2; exit 1 ;;
    esac
    # ldd says "statically linked" (static-pie) or "not a dynamic executable": no library lines.
    libraries=$(ldd "$path" 2>&1 || true)
    case "$libraries" in
        *"=>"*|*ld-linux*) echo "enclave-image: ldd finds shared libraries in $path: $libraries" >&2; exit 1 ;;
    esac
    for leak in "$root" "$cargo_home" "${HOME:-}" /root/; do
        case "$leak" in ""|/) continue ;; esac
        count=$(strings -a "$path" | grep -cF -- "$leak" || true)
        if [ "$count" != 0 ]; then
            echo "enclave-image: $path contains $count string(s) with the host path $leak:" >&2
            strings -a "$path" | grep -F -- "$leak" | head -5 >&2
            exit 1
        fi
    done
done

extra=()
if [ -n "${NITRO_BLOBS:-}" ]; then
    extra+=(--nitro-blobs "$NITRO_BLOBS")
fi
if [ -n "${ENCLAVE_CONFIG:-}" ]; then
    extra+=(--config "$ENCLAVE_CONFIG")
fi
"$packer" build \
    --enclave "$bin_dir/cosigner-enclave" --init "$bin_dir/cosigner-init" \
    --out-dir "$out" "${extra[@]}" >/dev/null

# What an auditor needs to match (a static binary contains the C library it was linked with).
{
    echo "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH"
    echo "source: ${COSIGNER_SOURCE_REV:-$(git rev-parse HEAD 2>/dev/null || echo "unknown (not a git checkout)")}"
    "$cargo" --version
    rustc -vV
    echo "libc6-dev: $(dpkg-query -W -f='${Version}' libc6-dev 2>/dev/null || echo unknown)"
    echo "gcc: $(gcc --version | head -1)"
    echo "ld: $(ld --version | head -1)"
    if [ -n "${ENCLAVE_CONFIG:-}" ]; then
        echo "config: $(sha256sum "$ENCLAVE_CONFIG" | cut -d' ' -f1) $ENCLAVE_CONFIG${ALLOW_PRIVATE_KMS_ROOTS:+ (private KMS TLS roots allowed: an emulator or test image)}"
    else
        echo "config: built-in, KMS key ${KMS_KEY_ARN:-placeholder (not deployable)}${KMS_KEY_ARN:+, region ${AWS_REGION:-as in the ARN}}"
    fi
    echo "nitro blobs: ${NITRO_BLOBS:+$(cd "$NITRO_BLOBS" && sha256sum bzImage bzImage.config cmdline nsm.ko | tr '\n' ' ')}"
} > "$out/build-env.txt"

echo "enclave-image: $(( $(date +%s) - start )) s; in $out:"
(cd "$out" && for f in cosigner-enclave ramdisk-bootstrap.cpio ramdisk-app.cpio cosigner-enclave.eif; do
    [ -e "$f" ] && printf '  %-24s %10s bytes  sha256 %s\n' "$f" "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -d' ' -f1)"
done; true)
echo "  pcrs.json:"
sed 's/^/    /' "$out/pcrs.json"
