"""Test data: deterministic payloads and their digests."""

import hashlib


def payload(size, seed=0):
    """Deterministic, non-repeating-looking bytes of ``size``."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest() * 64
        counter += 1
    return bytes(out[:size])


def sha(data):
    return hashlib.sha256(data).hexdigest()
