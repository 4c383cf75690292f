"""Per-image seeds that depend only on (run seed, item id, sample index).

Because each image's seed is derived from its identity and not from its position in
a batch or a shard, images are identical whatever the batch size or process count.
"""

from __future__ import annotations

import hashlib

import numpy as np

SEED_BITS = 63


def derive_seed(run_seed: int, item_id: str, sample_index: int) -> int:
    """A 63-bit seed from the run seed, the item id and the sample index (stable across versions)."""
    key = f"evalkit-seed-v1\x1f{int(run_seed)}\x1f{item_id}\x1f{int(sample_index)}".encode()
    digest = hashlib.sha256(key).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)


def numpy_rng(seed: int) -> np.random.Generator:
    """A NumPy generator for a derived seed (PCG64, stable across NumPy versions)."""
    return np.random.Generator(np.random.PCG64(seed))


def legacy_numpy_seed(seed: int) -> int:
    """``seed`` folded into numpy's legacy ``RandomState`` range [0, 2**32).

    Derived seeds have 63 bits; torch-fidelity's KID and IS samplers (which evalkit
    reproduces) use ``RandomState``, which refuses seeds of 2**32 and above.
    """
    return int(seed) % 2**32
