#!/usr/bin/env bash
# `make demo`: the whole product in one minute, narrated.
#
#  1. start two cosigners on this machine (`make up`): the provider (Shard B) and the recovery
#     cosigner (Shard C), each an untrusted parent relaying to an enclave process that keeps its
#     keys in its own SoftHSM token;
#  2. check who we are talking to: each cosigner's attestation, verified by the client;
#  3. enrollment: the provider creates wallets only for devices the operator enrolled; Alice's
#     phone is refused without a token, and the operator signs one for its device key;
#  4. create a wallet: Alice's device (Shard A), B and C run a distributed key generation; no one
#     ever holds the whole key;
#  5. sign a 32-byte message (a Taproot sighash) with Alice's device and the provider;
#  6. verify the signature with an independent BIP-340 verifier (plain Python, no shared code);
#  7. refresh the shares (same key and address, new epoch: stolen old shares become useless);
#  8. Alice loses her phone: a new phone recovers the wallet with her offline recovery credential,
#     and the old phone is refused;
#  9. stop the cosigners (`make down`); their state stays under .dev/.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}
say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
trap './scripts/down.sh > /dev/null' EXIT

say "1. Starting the provider (Shard B) and the recovery cosigner (Shard C) on loopback"
./scripts/up.sh
# shellcheck disable=SC1091
. .dev/cosigner.env

say "2. Remote attestation: both cosigners prove what code they run (verified against .dev/trust.toml)"
"$BIN/cosigner" status | python3 -m json.tool

home=$(mktemp -d)/alice
say "3. Enrollment: the provider creates wallets only for devices its operator enrolled (the recovery cosigner is open)"
echo -n "Alice's phone asks for a wallet without a token: "
if "$BIN/cosigner" --home "$home" wallet create --json 2>&1; then
  echo "UNEXPECTED: the provider created a wallet without an enrollment token"; exit 1
fi
device_key=$("$BIN/cosigner" --home "$home" device-key --json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["device_key"])')
echo "The operator signs a token for Alice's device key $device_key, valid one day (.dev/enrollment/operator.pem):"
"$BIN/cosigner-parent" enrollment issue --operator-key .dev/enrollment/operator.pem \
  --device-key "$device_key" --expires-in-days 1 --out "$home.enrollment.token"
cat "$home.enrollment.token"

say "4. Alice's phone ($home) creates a 2-of-3 wallet with B and C (DKG, round-2 packages HPKE-sealed)"
wallet_json=$("$BIN/cosigner" --home "$home" wallet create --enrollment-token "$home.enrollment.token" \
  --recovery-key-out "$home.recovery.key" --json)
echo "$wallet_json" | python3 -m json.tool
wallet=$(echo "$wallet_json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["wallet_id"])')
key=$(echo "$wallet_json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["group_public_key"])')
echo "Alice holds only her share: $(ls "$home/wallets")"

message=$(printf 'cosigner demo: pay 0.01 BTC to Bob' | sha256sum | cut -d' ' -f1)
say "5. Alice and the provider sign the sighash $message"
signature=$("$BIN/cosigner" --home "$home" sign --wallet "$wallet" --message "$message" --json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["signature"])')
echo "signature: $signature"

say "6. An independent BIP-340 verifier (scripts/bip340_verify.py) checks it against the wallet key"
python3 scripts/bip340_verify.py "$key" "$message" "$signature"
echo "The signature is an ordinary Taproot key-path signature for $(echo "$wallet_json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["address"])')"

say "7. Proactive refresh: every party gets a new share, the key and address stay the same"
"$BIN/cosigner" --home "$home" refresh --wallet "$wallet" --json | python3 -m json.tool

new_home="$(dirname "$home")/alice-new-phone"
say "8. Alice loses her phone; her new phone recovers the wallet with the offline recovery credential"
"$BIN/cosigner" --home "$new_home" recover --wallet "$wallet" --recovery-key "$home.recovery.key" --json | python3 -m json.tool
signature=$("$BIN/cosigner" --home "$new_home" sign --wallet "$wallet" --message "$message" --json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["signature"])')
python3 scripts/bip340_verify.py "$key" "$message" "$signature" > /dev/null && echo "the new phone signs: valid BIP-340 signature"
echo -n "the old (stolen) phone tries to sign: "
if "$BIN/cosigner" --home "$home" sign --wallet "$wallet" --message "$message" 2>&1; then
  echo "UNEXPECTED: the old phone could still sign"; exit 1
fi

say "9. Stopping the cosigners (their sealed state stays in .dev/)"
./scripts/down.sh
trap - EXIT
rm -rf "$(dirname "$home")"
say "demo complete"
