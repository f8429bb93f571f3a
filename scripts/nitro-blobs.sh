#!/usr/bin/env bash
# make nitro-blobs AWS_BLOBS=DIR [OUT=DIR]: an enclave kernel and NSM driver for
# `make nitro-emulate`, for machines that have aws-nitro-enclaves-cli's small blob files but not
# its kernel (docs/nitro.md, "Emulator").
#
# aws-nitro-enclaves-cli ships blobs/x86_64/{bzImage, bzImage.config, cmdline, init, linuxkit,
# nsm.ko}. Its bzImage is AWS's enclave kernel (4.14) and nsm.ko its out-of-tree NSM driver. Where
# the bzImage cannot be had (a clone without its large files), this builds the closest kernel:
#
#   * the source: Linux 6.12 from Debian's linux-source-6.12 package (LINUX_SRC=DIR: an unpacked
#     tree of your own instead);
#   * the configuration: AWS's bzImage.config from AWS_BLOBS, brought to 6.12 with
#     `make olddefconfig`, plus the NSM driver that AWS upstreamed in Linux 6.8
#     (drivers/misc/nsm.c, CONFIG_NSM) as a module, exactly as nitro-cli's nsm.ko is one; module
#     signing and debug information off (nothing verifies them in an enclave);
#   * the command line: AWS's cmdline from AWS_BLOBS, unchanged.
#
# OUT (default target/nitro-blobs) then holds bzImage, bzImage.config, cmdline and nsm.ko: what
# NITRO_BLOBS takes. PCR0 and PCR1 of an image built with them differ from an image with AWS's
# kernel (they measure the kernel); PCR2 (our code) is the same.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-$ROOT/target/nitro-blobs}
WORK=${NITRO_BLOBS_WORK:-$ROOT/target/nitro-blobs-work}
fail() { echo "nitro-blobs: $*" >&2; exit 1; }

[ -n "${AWS_BLOBS:-}" ] || fail "AWS_BLOBS is not set: a directory with AWS's bzImage.config and cmdline (aws-nitro-enclaves-cli, blobs/x86_64/)"
for f in bzImage.config cmdline; do
  [ -f "$AWS_BLOBS/$f" ] || fail "$AWS_BLOBS/$f is missing"
done
grep -q '^CONFIG_X86_64=y' "$AWS_BLOBS/bzImage.config" || fail "$AWS_BLOBS/bzImage.config is not an x86_64 kernel configuration"
for tool in make gcc flex bison bc xz; do
  command -v "$tool" > /dev/null || fail "$tool not found (Debian: apt-get install build-essential flex bison bc xz-utils libelf-dev libssl-dev)"
done

mkdir -p "$WORK" "$OUT"
src=${LINUX_SRC:-}
if [ -z "$src" ]; then
  src="$WORK/linux-source-6.12"
  if [ ! -f "$src/Makefile" ]; then
    echo "nitro-blobs: fetching Debian's linux-source-6.12"
    (cd "$WORK" && apt-get download linux-source-6.12 > /dev/null) ||
      fail "apt-get download linux-source-6.12 failed (Debian 12 needs bookworm-backports or bookworm-updates in its sources)"
    deb=$(ls "$WORK"/linux-source-6.12_*.deb | head -1)
    dpkg-deb --fsys-tarfile "$deb" | tar -xO --wildcards './usr/src/linux-source-6.12.tar.xz' | tar -xJ -C "$WORK"
  fi
fi
[ -f "$src/drivers/misc/nsm.c" ] || fail "$src has no drivers/misc/nsm.c: the NSM driver needs Linux 6.8 or later"

cp "$AWS_BLOBS/bzImage.config" "$src/.config"
"$src/scripts/config" --file "$src/.config" \
  --module NSM \
  --disable MODULE_SIG --disable SYSTEM_TRUSTED_KEYRING --set-str SYSTEM_TRUSTED_KEYS "" \
  --disable DEBUG_INFO --disable DEBUG_INFO_BTF --enable DEBUG_INFO_NONE \
  --set-str LOCALVERSION "-nitro-emulate"
make -C "$src" olddefconfig > /dev/null
for option in CONFIG_NSM=m CONFIG_VIRTIO_MMIO=y CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y \
  CONFIG_VSOCKETS=y CONFIG_VIRTIO_VSOCKETS=y CONFIG_DEVTMPFS=y CONFIG_BLK_DEV_INITRD=y \
  CONFIG_SERIAL_8250_CONSOLE=y; do
  grep -qx "$option" "$src/.config" || fail "the configuration lost $option: an enclave cannot boot without it"
done
echo "nitro-blobs: building bzImage and modules in $src (2 cores: about 30 minutes)"
# Reproducible enough to compare two builds of one tree: fixed build user, host and time.
export KBUILD_BUILD_USER=cosigner KBUILD_BUILD_HOST=nitro-blobs
export KBUILD_BUILD_TIMESTAMP="${SOURCE_DATE_EPOCH:+@$SOURCE_DATE_EPOCH}"
[ -n "$KBUILD_BUILD_TIMESTAMP" ] || unset KBUILD_BUILD_TIMESTAMP
make -C "$src" -j"$(nproc)" bzImage modules > "$WORK/build.log" 2>&1 ||
  { tail -20 "$WORK/build.log" >&2; fail "the kernel build failed (log: $WORK/build.log)"; }
cp "$src/arch/x86/boot/bzImage" "$OUT/bzImage"
cp "$src/.config" "$OUT/bzImage.config"
cp "$AWS_BLOBS/cmdline" "$OUT/cmdline"
cp "$src/drivers/misc/nsm.ko" "$OUT/nsm.ko"
echo "nitro-blobs: in ${OUT#"$ROOT"/}:"
(cd "$OUT" && sha256sum bzImage bzImage.config cmdline nsm.ko | sed 's/^/  /')
echo "  kernel: $(file -b "$OUT/bzImage" | sed -n 's/.*version \([^ ]*\).*/\1/p')"
