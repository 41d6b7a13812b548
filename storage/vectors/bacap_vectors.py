#!/usr/bin/env python3
"""An independent computation of the BACAP vectors of docs/storage.md (storage/tests/bacap.rs,
`test_vectors`): pure Python (hashlib, hmac and textbook Edwards arithmetic), nothing shared
with the Rust code. Run: python3 storage/vectors/bacap_vectors.py"""
import hashlib, hmac

p = 2**255 - 19
l = 2**252 + 27742317777372353535851937790883648493
d = -121665 * pow(121666, p - 2, p) % p

def recover_x(y, sign):
    x2 = (y * y - 1) * pow(d * y * y + 1, p - 2, p) % p
    x = pow(x2, (p + 3) // 8, p)
    if (x * x - x2) % p:
        x = x * pow(2, (p - 1) // 4, p) % p
    if x & 1 != sign:
        x = p - x
    return x

By = 4 * pow(5, p - 2, p) % p
B = (recover_x(By, 0), By)

def add(P, Q):
    (x1, y1), (x2, y2) = P, Q
    t = d * x1 * x2 * y1 * y2 % p
    return ((x1 * y2 + x2 * y1) * pow(1 + t, p - 2, p) % p,
            (y1 * y2 + x1 * x2) * pow(1 - t, p - 2, p) % p)

def mul(k, P):
    R = (0, 1)
    while k:
        if k & 1:
            R = add(R, P)
        P = add(P, P)
        k >>= 1
    return R

def compress(P):
    x, y = P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")

def expand(prk, info, n):
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:n]

seed, index, chain = bytes([1] * 32), 5, bytes([2] * 32)
h = hashlib.sha512(seed).digest()
a = bytearray(h[:32]); a[0] &= 248; a[31] &= 127; a[31] |= 64
a = int.from_bytes(a, "little")
print("root", compress(mul(a, B)).hex())
for _ in range(3):
    okm = expand(chain, b"mixed-bacap-v1 box" + index.to_bytes(8, "big"), 96)
    f = int.from_bytes(okm[:64], "little") % l
    print("id%d" % index, compress(mul(f * a % l, B)).hex())
    chain = expand(chain, b"mixed-bacap-v1 next" + index.to_bytes(8, "big"), 32)
    index += 1
print("pos%d" % index, (index.to_bytes(8, "big") + chain).hex())
