#!/usr/bin/env python3
"""Verify a BIP-340 Schnorr signature with nothing but Python's integers and hashlib.

usage: bip340_verify.py PUBKEY_HEX32 MESSAGE_HEX32 SIGNATURE_HEX64

An independent check for `make demo`: no Rust, no FROST, no secp256k1 library, only the
verification algorithm of BIP-340 ("Verification" section) written out. Exit 0 when valid.
It checks itself against BIP-340's published test vectors first.
"""
import hashlib
import sys

P = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
G = (0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798,
     0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8)


def add(a, b):
    """Affine point addition on y^2 = x^3 + 7; None is the point at infinity."""
    if a is None:
        return b
    if b is None:
        return a
    if a[0] == b[0] and (a[1] + b[1]) % P == 0:
        return None
    if a == b:
        slope = 3 * a[0] * a[0] * pow(2 * a[1], P - 2, P) % P
    else:
        slope = (b[1] - a[1]) * pow(b[0] - a[0], P - 2, P) % P
    x = (slope * slope - a[0] - b[0]) % P
    return (x, (slope * (a[0] - x) - a[1]) % P)


def mul(point, k):
    result = None
    while k:
        if k & 1:
            result = add(result, point)
        point = add(point, point)
        k >>= 1
    return result


def lift_x(x):
    """The point with x coordinate x and an even y, if any (BIP-340 lift_x)."""
    if x >= P:
        return None
    c = (pow(x, 3, P) + 7) % P
    y = pow(c, (P + 1) // 4, P)
    if y * y % P != c:
        return None
    return (x, y if y % 2 == 0 else P - y)


def tagged_hash(tag, data):
    t = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(t + t + data).digest()


def verify(pubkey, msg, sig):
    if len(pubkey) != 32 or len(sig) != 64:
        return False
    point = lift_x(int.from_bytes(pubkey, "big"))
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if point is None or r >= P or s >= N:
        return False
    e = int.from_bytes(tagged_hash("BIP0340/challenge", sig[:32] + pubkey + msg), "big") % N
    R = add(mul(G, s), mul(point, N - e))
    return R is not None and R[1] % 2 == 0 and R[0] == r


# BIP-340 test-vectors.csv, indices 0 and 1 (valid), and 1 with one bit changed (invalid).
VECTORS = [
    ("F9308A019258C31049344F85F89D5229B531C845836F99B08601F113BCE036F9",
     "0000000000000000000000000000000000000000000000000000000000000000",
     "E907831F80848D1069A5371B402410364BDF1C5F8307B0084C55F1CE2DCA8215"
     "25F66A4A85EA8B71E482A74F382D2CE5EBEEE8FDB2172F477DF4900D310536C0", True),
    ("DFF1D77F2A671C5F36183726DB2341BE58FEAE1DA2DECED843240F7B502BA659",
     "243F6A8885A308D313198A2E03707344A4093822299F31D0082EFA98EC4E6C89",
     "6896BD60EEAE296DB48A229FF71DFE071BDE413E6D43F917DC8DCF8C78DE3341"
     "8906D11AC976ABCCB20B091292BFF4EA897EFCB639EA871CFA95F6DE339E4B0A", True),
    ("DFF1D77F2A671C5F36183726DB2341BE58FEAE1DA2DECED843240F7B502BA659",
     "243F6A8885A308D313198A2E03707344A4093822299F31D0082EFA98EC4E6C89",
     "6896BD60EEAE296DB48A229FF71DFE071BDE413E6D43F917DC8DCF8C78DE3341"
     "8906D11AC976ABCCB20B091292BFF4EA897EFCB639EA871CFA95F6DE339E4B0B", False),
]


def main():
    for pk, msg, sig, want in VECTORS:
        if verify(bytes.fromhex(pk), bytes.fromhex(msg), bytes.fromhex(sig)) != want:
            print("bip340_verify.py: self-test against BIP-340 vectors failed", file=sys.stderr)
            return 2
    if len(sys.argv) != 4:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        pk, msg, sig = (bytes.fromhex(a) for a in sys.argv[1:])
    except ValueError as e:
        print(f"bip340_verify.py: {e}", file=sys.stderr)
        return 2
    if verify(pk, msg, sig):
        print("valid BIP-340 signature")
        return 0
    print("INVALID signature", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
