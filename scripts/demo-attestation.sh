#!/usr/bin/env bash
# Attestation end to end, on a machine without Nitro:
#  1. create a local attester: a private SoftHSM token holding a P-384 attestation key and an
#     operator root, both generated inside the token;
#  2. produce a document binding a fresh nonce;
#  3. verify it against the operator root, pinning PCR0 = the enclave binary's measurement;
#  4. show that a tampered copy, a wrong nonce and the AWS root are all refused;
#  5. verify a real AWS Nitro document at its own time, if ../shared/fixtures is here.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
BIN=${BIN:-target/debug}
COSIGNER="$BIN/cosigner"
ENCLAVE="$BIN/cosigner-enclave"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tokens"
use_softhsm "$work" "$work/tokens"
# PINs come from files, never from argv.
umask 077
random_hex 12 > "$work/pin"
random_hex 12 > "$work/so-pin"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
refused() { # run a command that must fail; print its one-line reason
  if out=$("$@" 2>&1); then echo "UNEXPECTED: accepted"; exit 1; fi
  echo "refused as expected: $out"
}

step "1. create a local attester (token + operator root) in $work/attester"
"$ENCLAVE" local-attester init --dir "$work/attester" --token-label demo-attester \
  --pin-file "$work/pin" --so-pin-file "$work/so-pin"

step "2. produce a document with a fresh nonce"
nonce=$(random_hex 32)
"$ENCLAVE" local-attester attest --dir "$work/attester" --pin-file "$work/pin" \
  --nonce "$nonce" --user-data "$(printf 'demo session' | od -An -tx1 | tr -d ' \n')" \
  --out "$work/doc.cose"
echo "nonce $nonce -> $(wc -c < "$work/doc.cose") bytes"

step "3. verify it under the operator root, pinning PCR0 and the nonce"
pcr0=$("$ENCLAVE" measure)
"$COSIGNER" attestation verify --doc "$work/doc.cose" --root "$work/attester/root.pem" \
  --pcr "0=$pcr0" --nonce "$nonce" --max-age 60

step "4. tampered, replayed or mis-rooted documents are refused"
cp "$work/doc.cose" "$work/tampered.cose"
# Flip one bit in the middle of the signed payload.
offset=$(( $(wc -c < "$work/doc.cose") / 2 ))
byte=$(od -An -tu1 -j "$offset" -N1 "$work/doc.cose" | tr -d ' ')
printf "$(printf '\\%03o' $(( byte ^ 1 )))" | dd of="$work/tampered.cose" bs=1 seek="$offset" conv=notrunc status=none
echo -n "one flipped bit: "
refused "$COSIGNER" attestation verify --doc "$work/tampered.cose" --root "$work/attester/root.pem"
echo -n "another nonce:   "
refused "$COSIGNER" attestation verify --doc "$work/doc.cose" --root "$work/attester/root.pem" --nonce 00
fixtures=../shared/fixtures/nitro
if [ -d "$fixtures" ]; then
  echo -n "AWS root:        "
  refused "$COSIGNER" attestation verify --doc "$work/doc.cose" --root "$fixtures/aws-nitro-root-g1.pem"

  step "5. a real AWS Nitro document, verified at its own time (2022-10-13 08:58:03 UTC)"
  "$COSIGNER" attestation verify --doc "$fixtures/real-2022-10-13.cose" \
    --root "$fixtures/aws-nitro-root-g1.pem" --at 1665651483 | cut -c1-200
  echo "..."
  echo -n "the same today:  "
  refused "$COSIGNER" attestation verify --doc "$fixtures/real-2022-10-13.cose" \
    --root "$fixtures/aws-nitro-root-g1.pem"
else
  echo "(../shared/fixtures absent: skipping the real AWS document)"
fi
step "demo complete"
