"""Independent checks of cosigner's Ethereum transactions (tests/tests/eth_threshold.rs,
eth_wallet.rs).

Reads one JSON object on stdin:
  {"address": "0x…", "fund_wei": "…", "txs": ["0x…raw", …],
   "token": {"supply": "…", "watch": ["0x…", …]}}          ("token" optional)
For each raw transaction: eth-account recovers its sender, and an in-process EVM (eth-tester
with py-evm; chain id 131277322940537), whose genesis funds `address`, executes it.
With "token", before the transactions the tester's first account deploys tests/py/token.vy
(compiled here by the vyper compiler) with the whole supply to `address`; the deployment is the
same in every run, so the token's address is too ("deploy_only": true prints just it).
Prints one JSON object: {"senders": […], "receipts": [status, …], "balances": {address: wei},
"token": "0x…", "token_balances": {address: base units}}.
Nothing here shares code with cosigner: RLP, Keccak, secp256k1 recovery and execution are
eth-account's, eth-rlp's, coincurve's or eth-keys', and py-evm's; the token is vyper's output.
"""

import json
import pathlib
import sys

from eth_account import Account
from eth_tester import EthereumTester, PyEVMBackend

BALANCE_OF = bytes.fromhex("70a08231")


def deploy_token(tester, holder: str, supply: int) -> str:
    import vyper
    from eth_abi import encode

    source = (pathlib.Path(__file__).parent / "token.vy").read_text()
    bytecode = vyper.compile_code(source, output_formats=["bytecode"])["bytecode"]
    args = encode(["address", "uint256"], [holder, supply]).hex()
    tx_hash = tester.send_transaction(
        {
            "from": tester.get_accounts()[0],
            "data": bytecode + args,
            "gas": 3_000_000,
            "value": 0,
        }
    )
    receipt = tester.get_transaction_receipt(tx_hash)
    assert receipt["status"] == 1, receipt
    return receipt["contract_address"]


def token_balance(tester, token: str, owner: str) -> int:
    data = "0x" + (BALANCE_OF + bytes(12) + bytes.fromhex(owner[2:])).hex()
    out = tester.call({"from": tester.get_accounts()[0], "to": token, "data": data})
    raw = bytes.fromhex(out[2:]) if isinstance(out, str) else bytes(out)
    return int.from_bytes(raw, "big")


def main() -> None:
    job = json.load(sys.stdin)
    address = job["address"]
    state = PyEVMBackend.generate_genesis_state(num_accounts=1)
    state[bytes.fromhex(address[2:])] = {
        "balance": int(job["fund_wei"]),
        "nonce": 0,
        "code": b"",
        "storage": {},
    }
    tester = EthereumTester(PyEVMBackend(genesis_state=state))
    token = None
    if "token" in job:
        token = deploy_token(tester, address, int(job["token"]["supply"]))
        if job.get("deploy_only"):
            json.dump({"token": token.lower()}, sys.stdout)
            return
    senders, receipts, touched = [], [], {address}
    for raw in job.get("txs", []):
        senders.append(Account.recover_transaction(raw))
        tx_hash = tester.send_raw_transaction(raw)
        receipts.append(tester.get_transaction_receipt(tx_hash)["status"])
        to = tester.get_transaction_by_hash(tx_hash)["to"]
        if to:
            touched.add(to)
    balances = {a.lower(): str(tester.get_balance(a)) for a in touched}
    report = {"senders": senders, "receipts": receipts, "balances": balances}
    if token:
        watch = [address] + job["token"].get("watch", [])
        report["token"] = token.lower()
        report["token_balances"] = {
            a.lower(): str(token_balance(tester, token, a)) for a in watch
        }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
