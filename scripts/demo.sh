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
#  8. many addresses and a PSBT round trip: two derived addresses, the wallet's descriptor
#     imported by BDK (bdkpython) as a watch-only wallet, which builds a PSBT spending them;
#     cosigner signs it (--psbt-out) and BDK finalizes it into the transaction cosigner made;
#  9. Alice loses her phone: a new phone recovers the wallet with her offline recovery credential,
#     and the old phone is refused;
# 10. stop the cosigners (`make down`); their state stays under .dev/.
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

say "8. Many addresses: BIP-32 children of the wallet's key, each a BIP-86 Taproot address"
first=$("$BIN/cosigner" --home "$home" address --wallet "$wallet" --json)
second=$("$BIN/cosigner" --home "$home" address --wallet "$wallet" --json)
echo "$first"
echo "$second"
descriptor=$("$BIN/cosigner" --home "$home" wallet descriptor --wallet "$wallet" --json)
echo "$descriptor" | python3 -m json.tool
field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
echo "BDK imports the descriptor watch-only; it sees 0.5 BTC paid to each address (a funding"
echo "transaction shown to it: no blockchain in this demo) and builds a PSBT paying 0.7 BTC away:"
stranger=bcrt1pmfr3p9j00pfxjh0zmgp99y8zftmd3s5pmedqhyptwy6lm87hf5ssm803es
built=$(python3 - "$descriptor" "$(echo "$first" | field address)" "$(echo "$second" | field address)" "$stranger" <<'PY' | python3 tests/py/hd_wallets.py
import json, sys
job = json.loads(sys.argv[1])
job.update(mode="spend", fund=[[sys.argv[2], 50_000_000], [sys.argv[3], 50_000_000]],
           to=sys.argv[4], amount=70_000_000)
print(json.dumps(job))
PY
)
echo "$built" | field psbt > "$home.psbt"
echo "cosigner signs it with the provider (each input with its child's key; BDK's change output"
echo "recognised by its derivation) and writes the signed PSBT:"
signed=$("$BIN/cosigner" --home "$home" sign --wallet "$wallet" --psbt "$home.psbt" \
  --psbt-out "$home.signed.psbt" --json)
echo "$signed" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({k: d[k] for k in ("txid", "value_leaving", "fee", "change")}))'
finalized=$(python3 - "$descriptor" "$(echo "$built" | field funding_tx)" "$(cat "$home.signed.psbt")" <<'PY' | python3 tests/py/hd_wallets.py
import json, sys
job = json.loads(sys.argv[1])
job.update(mode="finalize", funding_tx=sys.argv[2], psbt=sys.argv[3])
print(json.dumps(job))
PY
)
if [ "$(echo "$finalized" | field tx_hex)" = "$(echo "$signed" | field tx_hex)" ]; then
  echo "BDK finalized the signed PSBT into the same transaction: $(echo "$signed" | field txid)"
else
  echo "UNEXPECTED: BDK finalized another transaction"; exit 1
fi

new_home="$(dirname "$home")/alice-new-phone"
say "9. Alice loses her phone; her new phone recovers the wallet with the offline recovery credential"
"$BIN/cosigner" --home "$new_home" recover --wallet "$wallet" --recovery-key "$home.recovery.key" --json | python3 -m json.tool
signature=$("$BIN/cosigner" --home "$new_home" sign --wallet "$wallet" --message "$message" --json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["signature"])')
python3 scripts/bip340_verify.py "$key" "$message" "$signature" > /dev/null && echo "the new phone signs: valid BIP-340 signature"
echo -n "the old (stolen) phone tries to sign: "
if "$BIN/cosigner" --home "$home" sign --wallet "$wallet" --message "$message" 2>&1; then
  echo "UNEXPECTED: the old phone could still sign"; exit 1
fi

say "10. Stopping the cosigners (their sealed state stays in .dev/)"
./scripts/down.sh
trap - EXIT
rm -rf "$(dirname "$home")"
say "demo complete"
