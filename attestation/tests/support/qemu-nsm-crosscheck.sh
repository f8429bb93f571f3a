#!/bin/sh
# Cross-checks tests/golden/qemu_nsm.txt against QEMU's own code: compiles the functions that
# write an attestation document in hw/virtio/virtio-nsm.c (QEMU 10.0), from add_protected_header_to_cose
# to add_signature_to_cose, with QEMU's hw/virtio/cbor-helpers.c, against libcbor (libcbor-dev),
# with a fixed clock and the inputs of attestation/tests/emulated_nsm.rs, and compares the bytes.
#
#   attestation/tests/support/qemu-nsm-crosscheck.sh QEMU_SOURCE_DIR
#
# Needs a C compiler, libcbor-dev, libglib2.0-dev and libssl-dev. Not part of `make test`.
set -eu
qemu=${1:?usage: $0 QEMU_SOURCE_DIR}
here=$(cd "$(dirname "$0")" && pwd)
golden="$here/../golden/qemu_nsm.txt"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/hw/virtio"
cp "$qemu/include/hw/virtio/cbor-helpers.h" "$work/hw/virtio/"
{
    cat <<'C'
#include <stdio.h>
#include <stdint.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>
#include <glib.h>
#include <openssl/sha.h>
#define QCRYPTO_HASH_DIGEST_LEN_SHA384 48
#define NSM_MAX_PCRS 32
#define NSM_REQUEST_MAX_SIZE 0x1000
struct PCRInfo { bool locked; uint8_t data[QCRYPTO_HASH_DIGEST_LEN_SHA384]; };
typedef struct VirtIONSM {
    struct PCRInfo pcrs[NSM_MAX_PCRS]; char *digest; char *module_id;
} VirtIONSM;
static time_t fixed_time(void *unused) { (void)unused; return 1750000000; }
#define time(x) fixed_time(x)
C
    cat "$qemu/hw/virtio/cbor-helpers.c"
    # The request struct and the four add_*_to_cose functions, without handle_attestation.
    awk '/^struct AttestationProperty \{/,/^\} NSMAttestationReq;/' "$qemu/hw/virtio/virtio-nsm.c"
    awk '/^static bool add_protected_header_to_cose/{on=1} /^ \* Attestation response structure/{on=0} on' \
        "$qemu/hw/virtio/virtio-nsm.c" | sed '$d'
    cat <<'C'
static void extend(uint8_t *pcr, uint8_t byte) {
    uint8_t in[96];
    memset(in, 0, 48);
    memset(in + 48, byte, 48);
    SHA384(in, 96, pcr);
}
int main(int argc, char **argv) {
    (void)argv;
    static VirtIONSM vnsm;
    static NSMAttestationReq req;
    static uint8_t buf[16384];
    vnsm.digest = "SHA384";
    vnsm.module_id = "i-234-enc5678";
    extend(vnsm.pcrs[0].data, 0xa0);
    extend(vnsm.pcrs[1].data, 0xb0);
    extend(vnsm.pcrs[2].data, 0xc0);
    for (int i = 0; i < 16; i++) vnsm.pcrs[i].locked = true;
    req.public_key.is_null = req.user_data.is_null = req.nonce.is_null = true;
    if (argc == 1) {
        req.public_key.is_null = false; req.public_key.len = 65; req.public_key.buf[0] = 4;
        memset(req.public_key.buf + 1, 0x33, 64);
        req.user_data.is_null = false; req.user_data.len = 32; memset(req.user_data.buf, 0x22, 32);
        req.nonce.is_null = false; req.nonce.len = 32; memset(req.nonce.buf, 0x11, 32);
    }
    cbor_item_t *cose = cbor_new_definite_array(4);
    if (!add_protected_header_to_cose(cose) || !add_unprotected_header_to_cose(cose) ||
        !add_payload_to_cose(cose, &vnsm, &req) || !add_signature_to_cose(cose)) return 1;
    size_t len = cbor_serialize(cose, buf, sizeof buf);
    for (size_t i = 0; i < len; i++) printf("%02x", buf[i]);
    printf("\n");
    return 0;
}
C
} > "$work/harness.c"
# shellcheck disable=SC2046 # pkg-config prints several words on purpose
cc -w -I"$work" $(pkg-config --cflags glib-2.0) "$work/harness.c" -o "$work/harness" \
    $(pkg-config --libs glib-2.0) -lcbor -lcrypto
status=0
for name in attested bare; do
    want=$(sed -n "s/^qemu\.$name //p" "$golden")
    if [ "$name" = attested ]; then got=$("$work/harness"); else got=$("$work/harness" bare); fi
    if [ "$want" = "$got" ]; then
        echo "qemu.$name: QEMU writes exactly the pinned bytes"
    else
        echo "qemu.$name: DIFFERS from QEMU's output:"
        echo "  pinned: $want"
        echo "  QEMU:   $got"
        status=1
    fi
done
exit $status
