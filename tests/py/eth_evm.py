"""Independent checks of cosigner's Ethereum transactions (tests/tests/eth_threshold.rs).

Reads one JSON object on stdin: {"address": "0x…", "fund_wei": "…", "txs": ["0x…raw", …]}.
For each raw transaction: eth-account recovers its sender, and an in-process EVM (eth-tester
with py-evm; chain id 131277322940537), whose genesis funds `address`, executes it.
Prints one JSON object: {"senders": […], "receipts": [status, …], "balances": {address: wei}}.
Nothing here shares code with cosigner: RLP, Keccak, secp256k1 recovery and execution are
eth-account's, eth-rlp's, coincurve's or eth-keys', and py-evm's.
"""

import json
import sys

from eth_account import Account
from eth_tester import EthereumTester, PyEVMBackend


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
    senders, receipts, touched = [], [], {address}
    for raw in job["txs"]:
        senders.append(Account.recover_transaction(raw))
        tx_hash = tester.send_raw_transaction(raw)
        receipts.append(tester.get_transaction_receipt(tx_hash)["status"])
        to = tester.get_transaction_by_hash(tx_hash)["to"]
        if to:
            touched.add(to)
    balances = {a.lower(): str(tester.get_balance(a)) for a in touched}
    json.dump({"senders": senders, "receipts": receipts, "balances": balances}, sys.stdout)


if __name__ == "__main__":
    main()
