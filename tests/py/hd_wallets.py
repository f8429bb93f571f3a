"""A cosigner wallet in independent wallet software: BDK (bdkpython, PyPI) and embit.

Reads a JSON job on stdin (regtest) with the wallet's descriptors {"receive": DESC,
"change": DESC, "multipath": DESC} and a "mode":

- "derive" (the default), with "receive_indices" and "change_indices": prints
  {"bdk": {"receive": {i: address}, "change": {...}}, "embit": {...}} where BDK imports the
  receive and change descriptors as a watch-only wallet and embit parses them (the multipath one
  included) on its own.
- "spend", with "fund" ([[address, sat], ...]), "to" (address) and "amount" (sat): a funding
  transaction paying those of the wallet's addresses is shown to the watch-only BDK wallet, which
  builds a PSBT paying "amount" to "to" with change back to itself. Prints {"funding_tx": hex,
  "psbt": base64}.
- "finalize", with "funding_tx" and "psbt" (signed by cosigner, base64): BDK finalizes the PSBT
  and extracts the transaction. Prints {"finalized": bool, "tx_hex": hex}.
"""

import json
import sys

import bdkpython as bdk
from embit.descriptor import Descriptor
from embit.networks import NETWORKS


def watch_only(job):
    receive = bdk.Descriptor(job["receive"], bdk.NetworkKind.TEST)
    change = bdk.Descriptor(job["change"], bdk.NetworkKind.TEST)
    return bdk.Wallet(receive, change, bdk.Network.REGTEST, bdk.Persister.new_in_memory())


def funded(job, funding_hex):
    """The watch-only wallet, having seen the (unconfirmed) funding transaction."""
    wallet = watch_only(job)
    wallet.reveal_addresses_to(bdk.KeychainKind.EXTERNAL, 20)
    tx = bdk.Transaction(bytes.fromhex(funding_hex))
    wallet.apply_unconfirmed_txs([bdk.UnconfirmedTx(tx=tx, last_seen=1)])
    return wallet


def funding_tx(fund):
    """A transaction paying each (address, sat) of `fund`, from an outpoint nobody else knows."""
    import hashlib
    import struct

    def compact(n):
        return bytes([n]) if n < 0xFD else b"\xfd" + struct.pack("<H", n)

    raw = struct.pack("<i", 2) + compact(1)
    raw += hashlib.sha256(json.dumps(fund).encode()).digest() + struct.pack("<I", 0)
    raw += compact(0) + struct.pack("<I", 0xFFFFFFFD)
    raw += compact(len(fund))
    for address, sat in fund:
        script = bdk.Address(address, bdk.Network.REGTEST).script_pubkey().to_bytes()
        raw += struct.pack("<q", sat) + compact(len(script)) + bytes(script)
    raw += struct.pack("<I", 0)
    return raw.hex()


def spend(job):
    funding = funding_tx(job["fund"])
    wallet = funded(job, funding)
    to = bdk.Address(job["to"], bdk.Network.REGTEST).script_pubkey()
    psbt = (
        bdk.TxBuilder()
        .add_recipient(to, bdk.Amount.from_sat(job["amount"]))
        .fee_rate(bdk.FeeRate.from_sat_per_vb(2))
        .finish(wallet)
    )
    return {"funding_tx": funding, "psbt": psbt.serialize()}


def finalize(job):
    wallet = funded(job, job["funding_tx"])
    psbt = bdk.Psbt(job["psbt"])
    finalized = wallet.finalize_psbt(psbt)
    tx = psbt.extract_tx()
    return {"finalized": finalized, "tx_hex": bytes(tx.serialize()).hex()}


def main():
    job = json.load(sys.stdin)
    mode = job.get("mode", "derive")
    if mode == "spend":
        print(json.dumps(spend(job)))
        return
    if mode == "finalize":
        print(json.dumps(finalize(job)))
        return
    wallet = watch_only(job)
    keychains = {"receive": bdk.KeychainKind.EXTERNAL, "change": bdk.KeychainKind.INTERNAL}
    out = {"bdk": {}, "embit": {}}
    for name, kind in keychains.items():
        indices = job[name + "_indices"]
        out["bdk"][name] = {
            str(i): str(wallet.peek_address(kind, i).address) for i in indices
        }
        # embit: the keychain's own descriptor, and the multipath one's branch.
        own = Descriptor.from_string(job[name].split("#")[0])
        branch = 0 if name == "receive" else 1
        multi = Descriptor.from_string(job["multipath"].split("#")[0])
        regtest = NETWORKS["regtest"]
        addresses = {}
        for i in indices:
            a = own.derive(i).address(regtest)
            b = multi.derive(i, branch_index=branch).address(regtest)
            if a != b:
                raise SystemExit(f"embit: {name} {i}: {a} != {b} (multipath)")
            addresses[str(i)] = a
        out["embit"][name] = addresses
    print(json.dumps(out))


if __name__ == "__main__":
    main()
