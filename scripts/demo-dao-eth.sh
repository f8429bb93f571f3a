#!/usr/bin/env bash
# `make demo-dao-eth`: the DAO treasury in ETH, end to end, narrated.
#
#  1. start the provider (with its parent's mailbox) and the recovery cosigner (`make up`);
#  2. five members (alice … eve), each with a device key in its own home;
#  3. alice proposes an Ethereum treasury (`dao create --chain ethereum`) under the policy of
#     examples/policies/dao-eth.toml — below 10 ETH 3 approvals, below 100 ETH 4, more all 5 —
#     and the others join: a threshold ECDSA key (DKLs23) among the members and the provider's
#     weighted parties, through the mailbox; nobody holds the key;
#  4. a 5 ETH payment with 3 approvals is signed;
#  5. a 20 ETH payment with 4 approvals is signed;
#  6. a 20 ETH payment that gets only 3 approvals (dave and eve reject) is refused by the
#     provider, which reads the amount from the transaction itself;
#  7. an independent EVM (eth-tester with py-evm, from PyPI) funds the treasury's address in its
#     genesis and executes the two signed transactions; eth-account recovers their sender;
#  8. stop the cosigners.
#
# The policy is the example's with its chain pinned to the local EVM's chain id instead of
# mainnet's (a transaction for another chain is refused).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}
say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
dir=$(mktemp -d)
trap './scripts/down.sh > /dev/null; rm -rf "$dir"' EXIT
CHAIN_ID=131277322940537
BOB=0x000000000000000000000000000000000000b0b0
NAMES=(alice bob carol dave eve)

say "1. Starting the provider (its parent runs the members' mailbox) and the recovery cosigner"
./scripts/up.sh
# shellcheck disable=SC1091
. .dev/cosigner.env

say "2. Five members, each with a device key on her own device (here: a home directory each)"
: > "$dir/members.toml"
for name in "${NAMES[@]}"; do
  key=$("$BIN/cosigner" --home "$dir/$name" device-key --json | field device_key)
  printf '[[member]]\nname = "%s"\ndevice_key = "%s"\n\n' "$name" "$key" >> "$dir/members.toml"
  echo "$name: $key"
done
sed "s/^chain_ids = \[1\]/chain_ids = [$CHAIN_ID]/" examples/policies/dao-eth.toml > "$dir/policy.toml"
echo "policy (examples/policies/dao-eth.toml, pinned to the local EVM's chain $CHAIN_ID):"
grep -E '^(name|below|approvals|chain_ids)' "$dir/policy.toml" | sed 's/^/  /'

say "3. alice proposes the treasury (--chain ethereum); bob, carol, dave and eve join"
"$BIN/cosigner" --home "$dir/alice" dao create --chain ethereum --members "$dir/members.toml" \
  --policy "$dir/policy.toml" --invitation-out "$dir/invitation" --json > "$dir/created.json" &
creator=$!
while [ ! -s "$dir/invitation" ]; do sleep 0.1; done
joiners=()
for name in bob carol dave eve; do
  "$BIN/cosigner" --home "$dir/$name" join "$dir/invitation" --json > "$dir/$name.joined" 2> "$dir/$name.join.log" &
  joiners+=($!)
done
wait "$creator"
for pid in "${joiners[@]}"; do wait "$pid"; done
python3 -m json.tool "$dir/created.json"
wallet=$(field wallet_id < "$dir/created.json")
address=$(field address < "$dir/created.json")
for name in bob carol dave eve; do
  [ "$(cat "$dir/$name.joined")" = "$(cat "$dir/created.json")" ] || { echo "UNEXPECTED: $name holds another wallet"; exit 1; }
done
echo "every member holds one share of treasury $address; the provider holds three (parties 6-8 of 8, threshold 6)"

# payment TAG NONCE WEI_HEX: an eth_signTransaction object paying Bob.
payment() {
  printf '{"from":"%s","type":"0x2","chainId":"0x%x","nonce":"%s","to":"%s","value":"%s","gas":"0x5208","maxFeePerGas":"0x77359400","maxPriorityFeePerGas":"0x3b9aca00"}\n' \
    "$address" "$CHAIN_ID" "$2" "$BOB" "$3" > "$dir/$1.json"
}
# request TAG "APPROVERS" "REJECTERS": alice requests, the others approve or reject; prints
# alice's outcome (JSON) to $dir/TAG.out, returns her exit status.
request() {
  local tag=$1 pids=() status=0
  "$BIN/cosigner" --home "$dir/alice" sign --wallet "$wallet" --eth-tx "$dir/$tag.json" \
    --request-out "$dir/$tag.request" --timeout 300 --json > "$dir/$tag.out" 2> "$dir/$tag.log" &
  local requester=$!
  while [ ! -s "$dir/$tag.request" ]; do sleep 0.1; done
  for name in $2; do
    "$BIN/cosigner" --home "$dir/$name" approve --request "$dir/$tag.request" --yes --timeout 300 --json \
      > "$dir/$tag.$name" 2>&1 &
    pids+=($!)
  done
  for name in $3; do
    "$BIN/cosigner" --home "$dir/$name" approve --request "$dir/$tag.request" --reject --reason "too much" --json \
      > "$dir/$tag.$name" 2>&1 &
    pids+=($!)
  done
  wait "$requester" || status=$?
  for pid in "${pids[@]}"; do wait "$pid" || true; done
  return $status
}

say "4. alice asks to pay Bob 5 ETH; bob and carol approve (3 approvals: rule \"small\")"
payment small 0x0 0x4563918244f40000
request small "bob carol" ""
grep -E 'leaving|rule' "$dir/small.log" | sed 's/^/  /'
python3 -m json.tool "$dir/small.out"

say "5. alice asks to pay Bob 20 ETH; bob, carol and dave approve (4 approvals: rule \"large\")"
payment large 0x1 0x1158e460913d00000
request large "bob carol dave" ""
grep -E 'leaving|rule' "$dir/large.log" | sed 's/^/  /'
python3 -m json.tool "$dir/large.out"

say "6. alice asks to pay Bob another 20 ETH; only bob and carol approve, dave and eve reject"
payment refused 0x2 0x1158e460913d00000
if request refused "bob carol" "dave eve"; then
  echo "UNEXPECTED: a 20 ETH spend with 3 approvals was signed"; exit 1
fi
tail -n 1 "$dir/refused.log"

say "7. An independent EVM (eth-tester + py-evm) funds the treasury with 30 ETH and executes both"
python3 - "$dir" "$address" <<'EOF' | python3 tests/py/eth_evm.py | python3 -m json.tool
import json, pathlib, sys
d, address = pathlib.Path(sys.argv[1]), sys.argv[2]
txs = [json.loads((d / f"{t}.out").read_text())["raw_tx"] for t in ("small", "large")]
print(json.dumps({"address": address, "fund_wei": str(30 * 10**18), "txs": txs}))
EOF
echo "(senders: recovered by eth-account; receipts: 1 = executed; Bob holds 25 ETH)"

say "8. Stopping the cosigners"
./scripts/down.sh
trap 'rm -rf "$dir"' EXIT
say "demo complete"
