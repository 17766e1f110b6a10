"""Learned maps from BioLingual's text space (512-d) to BioCLIP-2's text space (768-d).

Fitted on paired text embeddings of the same prompts (each species under each template is
one pair), then applied to BioLingual *audio* embeddings, relying on BioLingual's own
audio-text alignment to carry the map across modalities. Three kinds:

- ``ridge``: affine least squares with an L2 penalty (closed form, matches sklearn ``Ridge``);
- ``procrustes``: a semi-orthogonal W (512, 768) with W W^T = I, an isometry, so BioLingual's
  cosine geometry (and its audio-text similarities) survive the map unchanged;
- ``mlp``: one hidden layer trained with a cosine loss, deterministic under ``seed``.

Every :class:`TextMapping` applies as ``apply(Z) -> (N, 768) float32, unit norm`` and
round-trips through ``to_dict`` / ``from_dict`` with its config and provenance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from songsight.encoders.base import l2_normalize

FORMAT_VERSION = 1

# Arrays each kind stores, (in, out) orientation so that a linear layer applies as Z @ W + b.
_ARRAY_NAMES = {
    "ridge": ("weight", "bias"),
    "procrustes": ("weight", "x_mean", "y_mean"),
    "mlp": ("w1", "b1", "w2", "b2"),
}


@dataclass
class TextMapping:
    """A fitted map: ``kind``, its ``arrays`` (float32), fit ``config`` and ``provenance``.

    ``provenance`` is free-form and JSON-able (model ids, revisions, prompt forms, package
    version); the fit functions leave it empty for the caller to fill.
    """

    kind: str
    arrays: dict[str, np.ndarray]
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in _ARRAY_NAMES:
            raise ValueError(
                f"unknown mapping kind {self.kind!r}; expected one of {sorted(_ARRAY_NAMES)}"
            )
        missing = [name for name in _ARRAY_NAMES[self.kind] if name not in self.arrays]
        if missing:
            raise ValueError(f"{self.kind} mapping lacks arrays {missing}")
        self.arrays = {
            name: np.asarray(self.arrays[name], dtype=np.float32)
            for name in _ARRAY_NAMES[self.kind]
        }

    @property
    def in_dim(self) -> int:
        return self.arrays["w1" if self.kind == "mlp" else "weight"].shape[0]

    @property
    def out_dim(self) -> int:
        return self.arrays["w2" if self.kind == "mlp" else "weight"].shape[1]

    def apply(self, z: np.ndarray) -> np.ndarray:
        """Map (N, in_dim) embeddings to (N, out_dim) float32, unit norm."""
        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.in_dim:
            raise ValueError(f"expected shape (N, {self.in_dim}), got {z.shape}")
        a = self.arrays
        if self.kind == "ridge":
            out = z @ a["weight"] + a["bias"]
        elif self.kind == "procrustes":
            out = (z - a["x_mean"]) @ a["weight"] + a["y_mean"]
        else:
            out = _mlp_forward(z, a)
        return l2_normalize(out)

    def to_dict(self, arrays_as_lists: bool = False) -> dict[str, Any]:
        """Plain dict; arrays stay numpy (for ``np.savez``) unless ``arrays_as_lists`` (for JSON)."""
        arrays = {
            name: (value.tolist() if arrays_as_lists else value.copy())
            for name, value in self.arrays.items()
        }
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "config": dict(self.config),
            "provenance": dict(self.provenance),
            "arrays": arrays,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextMapping:
        """Inverse of :meth:`to_dict`; arrays may be numpy arrays or nested lists."""
        version = data.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(
                f"text mapping format {version} is not supported (expected {FORMAT_VERSION})"
            )
        return cls(
            kind=data["kind"],
            arrays={
                name: np.asarray(value, dtype=np.float32) for name, value in data["arrays"].items()
            },
            config=dict(data.get("config", {})),
            provenance=dict(data.get("provenance", {})),
        )


def _check_pairs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"X (P, d_in) and Y (P, d_out) need the same rows, got {x.shape} and {y.shape}"
        )
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 pairs to fit a mapping, got {x.shape[0]}")
    return x, y


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> TextMapping:
    """Affine ridge regression ``Y ~ X W + b`` (the bias is not penalised), closed form.

    ``x`` (P, 512), ``y`` (P, 768). Solves ``(Xc^T Xc + alpha I) W = Xc^T Yc`` on centred data
    in float64, as sklearn ``Ridge(alpha, fit_intercept=True)`` does; ``alpha = 0`` takes the
    minimum-norm least-squares solution (well defined even when P < 512).
    """
    if not (np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be finite and >= 0, got {alpha}")
    x, y = _check_pairs(x, y)
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - x_mean, y - y_mean
    if alpha == 0:
        weight = np.linalg.lstsq(xc, yc, rcond=None)[0]
    else:
        gram = xc.T @ xc + alpha * np.eye(x.shape[1])
        weight = np.linalg.solve(gram, xc.T @ yc)
    bias = y_mean - x_mean @ weight
    return TextMapping("ridge", {"weight": weight, "bias": bias}, config={"alpha": float(alpha)})


def fit_procrustes(x: np.ndarray, y: np.ndarray, center: bool = False) -> TextMapping:
    """Orthogonal Procrustes across dimensions: ``min ||X W - Y||_F`` with ``W W^T = I``.

    ``x`` (P, 512), ``y`` (P, 768) -> W (512, 768) = U V^T from the thin SVD ``X^T Y = U S V^T``
    (for equal widths this is ``scipy.linalg.orthogonal_procrustes``). Needs d_in <= d_out.
    ``center=False`` (default) keeps the map linear, hence an exact isometry on cosines;
    ``center=True`` fits on mean-centred data and adds the means back (an affine map).
    """
    x, y = _check_pairs(x, y)
    if x.shape[1] > y.shape[1]:
        raise ValueError(
            f"Procrustes needs d_in <= d_out for W W^T = I, got {x.shape[1]} > {y.shape[1]}"
        )
    x_mean = x.mean(axis=0) if center else np.zeros(x.shape[1])
    y_mean = y.mean(axis=0) if center else np.zeros(y.shape[1])
    u, _, vt = np.linalg.svd((x - x_mean).T @ (y - y_mean), full_matrices=False)
    weight = u @ vt
    return TextMapping(
        "procrustes",
        {"weight": weight, "x_mean": x_mean, "y_mean": y_mean},
        config={"center": bool(center)},
    )


def _mlp_forward(z: np.ndarray, a: dict[str, np.ndarray]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        hidden = F.gelu(torch.from_numpy(z) @ torch.from_numpy(a["w1"]) + torch.from_numpy(a["b1"]))
        return (hidden @ torch.from_numpy(a["w2"]) + torch.from_numpy(a["b2"])).numpy()


def fit_mlp(
    x: np.ndarray,
    y: np.ndarray,
    hidden: int = 1024,
    epochs: int = 200,
    lr: float = 1e-3,
    seed: int = 0,
    batch_size: int | None = 256,
    weight_decay: float = 0.0,
) -> TextMapping:
    """One-hidden-layer GELU MLP trained with Adam on ``mean(1 - cos(f(x), y))``, on CPU.

    ``x`` (P, 512), ``y`` (P, 768); ``batch_size=None`` trains full batch. Initialisation and
    shuffling draw only from ``seed`` (the global torch RNG is left untouched), so equal
    inputs and arguments give bit-identical weights on the same machine and thread count.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    if hidden < 1 or epochs < 0 or not lr > 0:
        raise ValueError(f"need hidden >= 1, epochs >= 0, lr > 0; got {hidden}, {epochs}, {lr}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    x64, y64 = _check_pairs(x, y)
    inputs = torch.from_numpy(x64.astype(np.float32))
    targets = torch.from_numpy(y64.astype(np.float32))
    n_pairs = inputs.shape[0]
    step_size = n_pairs if batch_size is None else min(batch_size, n_pairs)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Linear(inputs.shape[1], hidden), nn.GELU(), nn.Linear(hidden, targets.shape[1])
        )
    shuffle = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n_pairs, generator=shuffle)
        for start in range(0, n_pairs, step_size):
            idx = order[start : start + step_size]
            loss = (1.0 - F.cosine_similarity(model(inputs[idx]), targets[idx], dim=1)).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()

    with torch.no_grad():
        final_loss = float((1.0 - F.cosine_similarity(model(inputs), targets, dim=1)).mean())

    first, last = model[0], model[2]
    arrays = {
        "w1": first.weight.detach().T.numpy().copy(),
        "b1": first.bias.detach().numpy().copy(),
        "w2": last.weight.detach().T.numpy().copy(),
        "b2": last.bias.detach().numpy().copy(),
    }
    config = {
        "hidden": int(hidden),
        "epochs": int(epochs),
        "lr": float(lr),
        "seed": int(seed),
        "batch_size": batch_size,
        "weight_decay": float(weight_decay),
        "loss": "cosine",
        "final_train_loss": final_loss,
    }
    return TextMapping("mlp", arrays, config=config)
