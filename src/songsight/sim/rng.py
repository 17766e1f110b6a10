"""Per-item random streams: each (seed, purpose, keys...) item of the world draws from its own.

Everything random in `songsight.sim` goes through `item_rng`, so an item is reproducible on
its own and items can be drawn or rendered in any order or in parallel.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["item_rng", "purpose_id"]


def purpose_id(purpose: str) -> int:
    """A stable 64-bit integer for a purpose string (``hash()`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(purpose.encode(), digest_size=8).digest(), "little")


def item_rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """The random stream of one (purpose, key...) item, e.g. ``("ssw_audio/train", label, i)``.

    Derived with `numpy.random.SeedSequence`, so each item is reproducible on its own and items
    can be rendered in any order or in parallel.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, purpose_id(purpose), *keys]))
