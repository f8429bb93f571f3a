"""Derives a cosigner wallet's addresses from its descriptors with independent wallet software.

Reads a JSON job on stdin: {"receive": DESC, "change": DESC, "multipath": DESC,
"receive_indices": [..], "change_indices": [..]} (regtest). Prints one JSON line:
{"bdk": {"receive": {i: address}, "change": {...}}, "embit": {...}} where BDK
(bdkpython, PyPI) imports the receive and change descriptors as a watch-only wallet and embit
parses them (the multipath one included) on its own.
"""

import json
import sys

import bdkpython as bdk
from embit.descriptor import Descriptor
from embit.networks import NETWORKS


def main():
    job = json.load(sys.stdin)
    receive = bdk.Descriptor(job["receive"], bdk.NetworkKind.TEST)
    change = bdk.Descriptor(job["change"], bdk.NetworkKind.TEST)
    wallet = bdk.Wallet(receive, change, bdk.Network.REGTEST, bdk.Persister.new_in_memory())
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
