"""The distilled encoder's head: from BioLingual's audio embedding (d) into the teacher's
text space (D), and how a distilled encoder reads a recording out of its windows.

`build_head` makes the torch head a checkpoint holds (linear, mlp, or `cascade_head`, the
zero-shot cascade as a trainable head); `numpy_head` runs a saved head without torch, for the
ONNX Runtime encoders. `HeadReadout` is what every distilled encoder shares whatever runs its
tower: windows keep the head's answer, window by window, while a recording's clip vector is
the head reading the clip's mean audio embedding (`clip_input`).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from songsight.encoders.base import ClipEmbedding, l2_normalize
from songsight.errors import InputFileError

__all__ = [
    "HEAD_KINDS",
    "FusedReadout",
    "HeadReadout",
    "build_head",
    "cascade_head",
    "clip_input",
    "init_cascade_head",
    "numpy_head",
]

HEAD_KINDS = ("linear", "mlp", "cascade")


def build_head(
    in_dim: int,
    out_dim: int,
    kind: str = "linear",
    hidden: int | None = None,
    n_species: int | None = None,
):
    """Head from BioLingual's 512-d projection to the teacher's 768-d space.

    ``cascade`` (`cascade_head`) needs ``n_species``, the rows of its species tables; it is
    built empty here and filled by `init_cascade_head` or a checkpoint's weights."""
    from torch import nn

    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        hidden = hidden or max(in_dim, out_dim)
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
    if kind == "cascade":
        if not n_species:
            raise ValueError("a cascade head needs n_species")
        return cascade_head(in_dim, out_dim, int(n_species))
    raise ValueError(f"head kind must be one of {HEAD_KINDS}, not {kind!r}")


def cascade_head(in_dim: int, out_dim: int, n_species: int):
    """The zero-shot cascade as a trainable head (S species, d = ``in_dim``, D = ``out_dim``).

    ``forward(base (B, d)) -> (B, D)``: species logits ``scale * cos(base, text) + bias`` over
    the student's own text embedding of every species (``text`` (S, d), trainable), their
    softmax, then the probability-weighted mean of the teacher's text embeddings of those
    species (``targets`` (S, D), fixed). Filled by `init_cascade_head` with BioLingual's
    species text, its own temperature and zero biases, it *is* the weighted zero-shot
    cascade: distillation starts from what the untouched student knows about every species
    of the table, held-out ones included, and its output stays among the teacher's species
    texts, where their photos are. ``species_logits(base)`` gives the (B, S) logits.
    """
    import torch
    from torch import nn

    class CascadeHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.text = nn.Parameter(torch.zeros(n_species, in_dim))
            self.bias = nn.Parameter(torch.zeros(n_species))
            self.log_scale = nn.Parameter(torch.zeros(()))
            self.register_buffer("targets", torch.zeros(n_species, out_dim))

        def species_logits(self, base):
            x = nn.functional.normalize(base, dim=-1)
            text = nn.functional.normalize(self.text, dim=-1)
            return self.log_scale.exp() * (x @ text.T) + self.bias

        def forward(self, base):
            return self.species_logits(base).softmax(dim=-1) @ self.targets

    return CascadeHead()


def init_cascade_head(head, audio_text: np.ndarray, targets: np.ndarray, temperature: float):
    """Make ``head`` (`cascade_head`) the weighted zero-shot cascade: BioLingual's species text
    ``audio_text`` (S, d) and temperature, the teacher's species text ``targets`` (S, D)."""
    import math

    import torch

    with torch.no_grad():
        head.text.copy_(torch.from_numpy(np.asarray(audio_text, np.float32)))
        head.targets.copy_(torch.from_numpy(np.asarray(targets, np.float32)))
        head.bias.zero_()
        head.log_scale.fill_(math.log(1.0 / float(temperature)))
    return head


def _student_module():
    from torch import nn

    class DistilledStudent(nn.Module):
        """features -> HTSAT -> audio projection (512) -> head (768); unnormalised outputs."""

        def __init__(self, clap, head):
            super().__init__()
            self.audio_model = clap.audio_model
            self.audio_projection = clap.audio_projection
            self.head = head

        def forward(self, feats):
            base = self.audio_projection(self.audio_model(input_features=feats).pooler_output)
            return self.head(base), base

    return DistilledStudent


def make_student(clap, head):
    """An nn.Module sharing ``clap``'s audio tower and projection, plus ``head``."""
    return _student_module()(clap, head)


def clip_input(base_windows):
    """(1, d), numpy or torch as given: what the head reads for a whole recording from its
    windows' audio embeddings (W, d) as the tower gives them: their mean as unit vectors
    (BioLingual's own clip embedding), scaled to their mean length (what the head was trained
    on)."""
    if isinstance(base_windows, np.ndarray):
        norms = np.linalg.norm(base_windows, axis=1, keepdims=True)
        mean = (base_windows / np.maximum(norms, 1e-12)).mean(axis=0, keepdims=True)
        return (mean * norms.mean()).astype(np.float32)
    norms = base_windows.norm(dim=1, keepdim=True)
    return (base_windows / norms.clamp_min(1e-12)).mean(0, keepdim=True) * norms.mean()


def numpy_head(head_meta: dict, weights: dict[str, np.ndarray]):
    """A saved head (a checkpoint's ``head`` record and its ``head.safetensors`` arrays) as a
    numpy function ``(N, d) -> (N, D)``, unnormalised, as the torch head computes it."""
    kind = head_meta["kind"]
    w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    if kind == "linear":
        return lambda x: (np.asarray(x, np.float64) @ w["weight"].T + w["bias"]).astype(np.float32)
    if kind == "mlp":
        from scipy.special import erf

        def mlp(x):
            h = np.asarray(x, np.float64) @ w["0.weight"].T + w["0.bias"]
            h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))  # nn.GELU's exact form
            return (h @ w["2.weight"].T + w["2.bias"]).astype(np.float32)

        return mlp
    if kind == "cascade":
        text = w["text"] / np.maximum(np.linalg.norm(w["text"], axis=1, keepdims=True), 1e-12)

        def cascade(x):
            x = np.asarray(x, np.float64)
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            logits = np.exp(float(w["log_scale"])) * (x @ text.T) + w["bias"]
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            return ((p / p.sum(axis=1, keepdims=True)) @ w["targets"]).astype(np.float32)

        return cascade
    raise ValueError(f"head kind must be one of {HEAD_KINDS}, not {kind!r}")


class HeadReadout:
    """What every distilled encoder shares, whatever runs its tower (torch, ONNX Runtime).

    A subclass's ``_forward`` gives, per window, the head's output (unit norm, D = ``dim``)
    beside the tower's audio embedding as it comes (d); ``_head_numpy`` runs the head on
    (N, d) numpy rows. `embed_windows` splits them: the windows keep the head's answers, and a
    recording's clip vector is the head reading the clip's audio embedding (`clip_input`), as
    BioLingual's own zero-shot classifies a clip, not the mean of the head's window answers:
    averaging a cascade head's per-window answers is a vote, and voting lost 4.6 points of
    top-1 against reading the mean (simulated world, 4 s windows over 10 s clips, validation).
    """

    dim: int

    def _head_numpy(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def embed_windows(self, sources, window_s=None, hop_s=None, *, on_progress=None):
        """As the tower's ``embed_windows``, each recording's clip vector read by the head
        from its mean audio embedding (see `pool_head`)."""
        for i, res in super().embed_windows(sources, window_s, hop_s, on_progress=on_progress):
            yield i, res if isinstance(res, InputFileError) else self._read_out(res)

    def _read_out(self, res: ClipEmbedding) -> ClipEmbedding:
        head_w, base_w = res.windows[:, : self.dim], res.windows[:, self.dim :]

        def pool(mask: np.ndarray | None) -> np.ndarray:
            return self.pool_head(base_w if mask is None else base_w[mask])

        return replace(res, windows=head_w, clip=pool(None), pool=pool)

    def pool_head(self, base_windows: np.ndarray) -> np.ndarray:
        """(D,) unit norm: the head's output for `clip_input` of ``base_windows`` (W, d)."""
        return l2_normalize(self._head_numpy(clip_input(np.asarray(base_windows, np.float32))))[0]


class FusedReadout(HeadReadout):
    """A distilled encoder beside the BioLingual it was distilled from, over the same windows:
    ``_forward`` gives [head output (D) | distilled audio embedding (d) | BioLingual's unit
    embedding (d')]; windows become [head output | BioLingual], each part unit norm, and the
    clip vector [the head's read-out | BioLingual's mean] (``distilled_dim`` = D,
    ``base_in_dim`` = d)."""

    distilled_dim: int
    base_in_dim: int

    def _read_out(self, res: ClipEmbedding) -> ClipEmbedding:
        d = self.distilled_dim
        head_w, own = res.windows[:, :d], res.windows[:, d : d + self.base_in_dim]
        orig = res.windows[:, d + self.base_in_dim :]

        def pool(mask: np.ndarray | None) -> np.ndarray:
            keep = slice(None) if mask is None else mask
            return np.concatenate(
                [self.pool_head(own[keep]), l2_normalize(orig[keep].mean(0, keepdims=True))[0]]
            )

        windows = np.concatenate([head_w, orig], axis=1)
        return replace(res, windows=windows, clip=pool(None), pool=pool)
