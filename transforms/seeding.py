"""Stable seeds and version-proof random draws.

Every random choice of a view comes from a generator seeded by (run seed, sample uid, view index),
so any worker, retry or re-run draws the same parameters. Seeds come from BLAKE2b over a typed,
length-prefixed encoding of the parts (never Python's ``hash()``, which is salted per process).

The draws below read only the raw 64-bit output of the generator's bit generator (PCG64, whose
stream NumPy keeps fixed), never ``Generator.random``/``integers``, whose algorithms NumPy may
change between versions: the parameters of a seed stay the same across NumPy upgrades.
"""

from __future__ import annotations

import hashlib

import numpy as np

_SEED_BITS = 63
_VIEW_DOMAIN = "datacompdr-reinforce/view"


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from ints and strings; different part lists give unrelated seeds."""
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, int | str):
            raise TypeError(f"seed parts must be int or str, got {type(part).__name__}")
        encoded = b"i" + str(part).encode("ascii") if isinstance(part, int) else b"s" + part.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return int.from_bytes(digest.digest(), "little") >> (64 - _SEED_BITS)


def view_rng(seed: int, uid: str, view_index: int) -> np.random.Generator:
    """The generator of one augmented view of one sample."""
    return np.random.Generator(np.random.PCG64(derive_seed(_VIEW_DOMAIN, seed, uid, view_index)))


def draw_unit(rng: np.random.Generator) -> float:
    """A float in [0, 1) with 53 random bits."""
    return (int(rng.bit_generator.random_raw()) >> 11) * (1.0 / (1 << 53))


def draw_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """A float in [low, high)."""
    return low + (high - low) * draw_unit(rng)


def draw_int(rng: np.random.Generator, low: int, high: int) -> int:
    """An int in [low, high) without modulo bias (rejection sampling on 64-bit draws)."""
    span = high - low
    if span <= 0:
        raise ValueError(f"empty range [{low}, {high})")
    limit = (1 << 64) - (1 << 64) % span
    while True:
        raw = int(rng.bit_generator.random_raw())
        if raw < limit:
            return low + raw % span
