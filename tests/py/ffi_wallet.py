"""A phone's life with a wallet, through the Python bindings of cosigner-ffi (UniFFI).

Run by tests/tests/ffi_bindings.rs against a deployment like `make up`'s, with
COSIGNER_PROVIDER, COSIGNER_RECOVERY, COSIGNER_TRUST and COSIGNER_BINDINGS (the folder holding
the generated cosigner_ffi.py and libcosigner_ffi.so) set. It writes no file.

The app's three parts are implemented here in Python, as a phone app implements them in Kotlin
or Swift: the device key (P-256, sign only: `cryptography` signs a digest, as Android Keystore's
NONEwithECDSA does), the record store (a dict) and the sealer (AES-256-GCM, the name as
associated data). Every signature is checked with the BIP-340 reference verifier below, which
shares no code with the library.

Prints one JSON line of what it saw; exits non-zero on the first failure.
"""

import hashlib
import json
import os
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, os.environ["COSIGNER_BINDINGS"])
import cosigner_ffi as cf  # noqa: E402

# --- BIP-340 reference verification (bips/bip-0340/reference.py, verify path only) ---
P = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
G = (
    0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798,
    0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8,
)


def point_add(p1, p2):
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    if p1[0] == p2[0] and p1[1] != p2[1]:
        return None
    if p1 == p2:
        lam = (3 * p1[0] * p1[0] * pow(2 * p1[1], P - 2, P)) % P
    else:
        lam = ((p2[1] - p1[1]) * pow(p2[0] - p1[0], P - 2, P)) % P
    x3 = (lam * lam - p1[0] - p2[0]) % P
    return (x3, (lam * (p1[0] - x3) - p1[1]) % P)


def point_mul(p, n):
    r = None
    for i in range(256):
        if (n >> i) & 1:
            r = point_add(r, p)
        p = point_add(p, p)
    return r


def tagged_hash(tag, msg):
    t = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(t + t + msg).digest()


def lift_x(x):
    if x >= P:
        return None
    y_sq = (pow(x, 3, P) + 7) % P
    y = pow(y_sq, (P + 1) // 4, P)
    if pow(y, 2, P) != y_sq:
        return None
    return (x, y if y & 1 == 0 else P - y)


def schnorr_verify(msg, pubkey, sig):
    if len(pubkey) != 32 or len(sig) != 64:
        return False
    p = lift_x(int.from_bytes(pubkey, "big"))
    r = int.from_bytes(sig[0:32], "big")
    s = int.from_bytes(sig[32:64], "big")
    if p is None or r >= P or s >= N:
        return False
    e = int.from_bytes(tagged_hash("BIP0340/challenge", sig[0:32] + pubkey + msg), "big") % N
    big_r = point_add(point_mul(G, s), point_mul(p, N - e))
    return big_r is not None and big_r[1] % 2 == 0 and big_r[0] == r


# --- the app's storage, in Python ---
class PyDeviceKey(cf.DeviceKeyStore):
    """A P-256 key that only signs digests (the secret never leaves this object)."""

    def __init__(self):
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.signatures = 0

    def public_key(self):
        return self._key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def sign_digest(self, digest):
        if len(digest) != 32:
            raise cf.CosignerError.Storage("a digest is 32 bytes")
        self.signatures += 1
        return self._key.sign(bytes(digest), ec.ECDSA(utils.Prehashed(hashes.SHA256())))


class PyRecords(cf.RecordStore):
    def __init__(self):
        self.records = {}

    def read(self, name):
        return self.records.get(name)

    def write(self, name, data):
        self.records[name] = bytes(data)

    def remove(self, name):
        self.records.pop(name, None)

    def list(self):
        return sorted(self.records)


class PySealer(cf.RecordSealer):
    """AES-256-GCM under a key the 'platform' holds; the record's name is the associated data."""

    def __init__(self):
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))

    def seal(self, name, plaintext):
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, bytes(plaintext), name.encode())

    def open(self, name, sealed):
        sealed = bytes(sealed)
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], name.encode())
        except InvalidTag:
            raise cf.CosignerError.ShareDamaged(f"{name}: does not open")


def phone(from_assets=False):
    """A new phone: its own key and storage. `from_assets`: the trust configuration handed over
    as text and root certificates, as an app that ships them as assets does."""
    device, records, sealer = PyDeviceKey(), PyRecords(), PySealer()
    trust, provider, recovery = (
        os.environ["COSIGNER_TRUST"], os.environ["COSIGNER_PROVIDER"], os.environ["COSIGNER_RECOVERY"]
    )
    if from_assets:
        import tomllib
        text = open(trust).read()
        folder = os.path.dirname(trust)
        roots = {r: open(os.path.join(folder, r), "rb").read() for r in tomllib.loads(text).get("roots", [])}
        client = cf.Cosigner.with_trust(text, roots, provider, recovery, records, sealer, device)
    else:
        client = cf.Cosigner(trust, provider, recovery, records, sealer, device)
    return client, device, records


def signs(client, wallet):
    message = os.urandom(32)
    signed = client.sign_message(wallet.wallet_id, message)
    key = bytes.fromhex(wallet.group_public_key)
    assert schnorr_verify(message, key, bytes(signed.signature)), "BIP-340 verification failed"
    if signed.receipt_json is not None:
        assert isinstance(json.loads(signed.receipt_json), dict)
    return signed


class BrokenDeviceKey(cf.DeviceKeyStore):
    """Throws what a buggy app throws: not a CosignerError."""

    def public_key(self):
        raise ValueError("no such key")

    def sign_digest(self, digest):
        raise ValueError("no such key")


def main():
    seen = {}
    # An app whose callback throws something else gets a typed error, not a crash.
    try:
        cf.Cosigner(
            os.environ["COSIGNER_TRUST"], os.environ["COSIGNER_PROVIDER"],
            os.environ["COSIGNER_RECOVERY"], PyRecords(), PySealer(), BrokenDeviceKey(),
        )
        raise AssertionError("a device key that throws was accepted")
    except cf.CosignerError.Storage:
        pass
    client, device, records = phone()
    assert len(client.device_public_key()) == 66
    # Malformed input is a typed error, not a crash.
    for bad in [lambda: client.sign_message("zz", b"\0" * 32), lambda: client.address("00", False, 0)]:
        try:
            bad()
            raise AssertionError("malformed input accepted")
        except cf.CosignerError.Input:
            pass

    created = client.create_wallet("regtest")
    wallet = created.wallet
    assert wallet.address.startswith("bcrt1p"), wallet.address
    assert created.recovery_key_pem.startswith("-----BEGIN PRIVATE KEY-----")
    seen["created"] = wallet.wallet_id
    # Every record the library wrote went through the sealer: none is readable here.
    for name, data in records.records.items():
        if name.startswith("wallets/"):
            assert not data.startswith(b"{") and b"group_public_key" not in data, name
    seen["records"] = sorted(records.records)
    # The credential stays (sealed) until the user has it offline; then the phone forgets it.
    assert client.recovery_key(wallet.wallet_id) == created.recovery_key_pem
    assert client.pending_recovery_keys() == [wallet.wallet_id]
    client.forget_recovery_key(wallet.wallet_id)
    assert client.pending_recovery_keys() == []
    assert client.recovery_key(wallet.wallet_id) is None
    assert not any(r.endswith(".recovery") for r in records.records)

    signs(client, wallet)
    seen["device_signatures"] = device.signatures
    try:
        client.sign_message(wallet.wallet_id, b"\0" * 31)
        raise AssertionError("a 31-byte message was signed")
    except cf.CosignerError.Input:
        pass

    receive = client.address(wallet.wallet_id, False, 0)
    change = client.address(wallet.wallet_id, True, 0)
    assert receive.startswith("bcrt1p") and receive != change
    descriptor = client.descriptor(wallet.wallet_id)
    assert descriptor.startswith("tr([") and "<0;1>/*" in descriptor, descriptor
    seen["descriptor"] = descriptor

    refreshed = client.refresh(wallet.wallet_id)
    assert refreshed.epoch == wallet.epoch + 1 and refreshed.address == wallet.address
    signs(client, refreshed)
    seen["refreshed_epoch"] = refreshed.epoch

    # The phone is lost: a new one, with its own key and storage, takes the wallet over with
    # the recovery credential.
    new_client, _, _ = phone(from_assets=True)
    recovered = new_client.recover(wallet.wallet_id, created.recovery_key_pem, "regtest")
    assert recovered.address == wallet.address
    assert recovered.group_public_key == wallet.group_public_key
    signs(new_client, recovered)
    seen["recovered_epoch"] = recovered.epoch
    # The lost phone's share and key sign nothing any more.
    try:
        client.sign_message(wallet.wallet_id, os.urandom(32))
        raise AssertionError("the lost phone still signs")
    except (cf.CosignerError.Refused, cf.CosignerError.Other) as e:
        seen["lost_phone"] = type(e).__name__
    assert [w.wallet_id for w in new_client.wallets()] == [wallet.wallet_id]
    seen["ethereum"] = ethereum(new_client)
    print(json.dumps(seen))


def ethereum(client):
    """An Ethereum account on the same phone: created, a transfer signed, recovered by
    eth-account (an independent decoder) as sent from the account; refreshed."""
    try:
        from eth_account import Account
    except ImportError:
        return "skipped: eth-account is not installed (make deps)"
    created = client.create_eth_wallet()
    account = created.wallet
    tx = {
        "from": account.address, "chainId": "0x539", "nonce": "0x0",
        "to": "0x000000000000000000000000000000000000b0b0", "value": "0x2386f26fc10000",
        "gas": "0x5208", "maxFeePerGas": "0x77359400", "maxPriorityFeePerGas": "0x3b9aca00",
    }
    signed = client.sign_eth_transaction(account.wallet_id, json.dumps(tx))
    assert signed._from == account.address  # `from` is a keyword: UniFFI names it `_from`
    sender = Account.recover_transaction(bytes(signed.raw_tx))
    assert sender == account.address, (sender, account.address)
    try:
        client.sign_eth_transaction(account.wallet_id, "{not json")
        raise AssertionError("a malformed transaction was accepted")
    except cf.CosignerError.Input:
        pass
    assert [w.wallet_id for w in client.eth_wallets()] == [account.wallet_id]
    refreshed = client.refresh_eth(account.wallet_id)
    assert refreshed.address == account.address and refreshed.epoch == account.epoch + 1
    # Lost again: a third phone takes the account over and spends from it.
    third, _, _ = phone()
    recovered = third.recover_eth(account.wallet_id, created.recovery_key_pem)
    assert recovered.address == account.address
    tx["nonce"] = "0x1"
    again = third.sign_eth_transaction(account.wallet_id, json.dumps(tx))
    assert Account.recover_transaction(bytes(again.raw_tx)) == account.address
    return {
        "address": account.address, "sender_checked": True, "epoch": refreshed.epoch,
        "recovered_epoch": recovered.epoch,
    }


if __name__ == "__main__":
    main()
