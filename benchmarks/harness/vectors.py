"""Species-shaped unit vectors and recall: the vector-search benchmarks' shared inputs."""

from __future__ import annotations

import numpy as np


def make_embeddings(
    n: int, dim: int, n_species: int, seed: int, chunk_rows: int = 65_536
) -> np.ndarray:
    """`(n, dim)` float32 unit vectors shaped like species embeddings.

    Species centres sit around genus centres (related species are close), species sizes are
    long-tailed, and each species varies along its own low-rank subspace plus a little
    isotropic noise: within-species variation in real embeddings is structured, not uniform.
    """
    rng = np.random.default_rng(seed)
    rank = 24

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    n_genera = max(1, n_species // 6)
    genera = unit(rng.standard_normal((n_genera, dim)))
    centres = unit(
        genera[rng.integers(0, n_genera, n_species)]
        + 0.9 * unit(rng.standard_normal((n_species, dim)))
    ).astype(np.float32)
    bases = (rng.standard_normal((n_species, rank, dim)) / np.sqrt(dim)).astype(np.float32)
    species_spread = rng.uniform(0.5, 1.0, n_species).astype(np.float32)
    weights = 1.0 / np.arange(1, n_species + 1) ** 0.7
    labels = rng.choice(n_species, size=n, p=weights / weights.sum())

    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk_rows):
        lab = labels[start : start + chunk_rows]
        noise = rng.standard_normal((len(lab), dim), np.float32)
        block = centres[lab] + np.float32(0.3 / np.sqrt(dim)) * noise
        z = rng.standard_normal((len(lab), rank), np.float32)
        for s in np.unique(lab):
            rows = np.flatnonzero(lab == s)
            block[rows] += species_spread[s] * (z[rows] @ bases[s]) / np.sqrt(rank)
        out[start : start + chunk_rows] = unit(block)
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )
