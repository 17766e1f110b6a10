"""The distilled encoder run by ONNX Runtime: the checkpoint's audio tower from a cached export,
its head in numpy (`songsight.encoders.heads.numpy_head`): no torch.

The tower is the checkpoint's own ``clap/`` folder exported as BioLingual's is
(`songsight.encoders.ort_cache`, keyed by the folder's files), so embeddings equal the torch
`songsight.encoders.distilled.DistilledEncoder`'s to float32 rounding and a search answers
the same either way. `OnnxFusedEncoder` runs the BioLingual it was distilled from beside it,
for the ``fused`` and cascade readouts.
"""

from __future__ import annotations

import json

import numpy as np

from songsight.encoders.base import l2_normalize
from songsight.encoders.heads import FusedReadout, HeadReadout, numpy_head
from songsight.encoders.loading import DISTILLED_MARKER, ResolvedModel
from songsight.encoders.ort_audio import OnnxAudioEncoder
from songsight.encoders.ort_cache import Build

__all__ = ["OnnxDistilledEncoder", "OnnxFusedEncoder"]


class OnnxDistilledEncoder(HeadReadout, OnnxAudioEncoder):
    """Audio -> the teacher's space (D, unit norm), as `DistilledEncoder` gives it."""

    name = "distilled"

    def __init__(self, build: Build, resolved: ResolvedModel, checkpoint, session=None, **windows):
        from safetensors.numpy import load_file

        super().__init__(build, resolved, session, **windows)
        self.checkpoint = checkpoint
        self.meta = json.loads((checkpoint / DISTILLED_MARKER).read_text())
        self._head = numpy_head(self.meta["head"], load_file(str(checkpoint / "head.safetensors")))
        self.base_dim = self.dim  # the tower's projection (d)
        self.dim = int(self.meta["head"]["out_dim"])

    def _head_numpy(self, x: np.ndarray) -> np.ndarray:
        return self._head(x)

    def _window_rows(self, feats: np.ndarray) -> np.ndarray:
        """(B, D + d): each window's head output (unit norm) beside its audio embedding."""
        base = self._tower(feats)
        return np.concatenate([l2_normalize(self._head(base)), base], axis=1)

    def _row_width(self) -> int:
        return int(self.meta["head"]["out_dim"]) + self.base_dim  # also under OnnxFusedEncoder

    def provenance(self) -> dict:
        from songsight.encoders.distilled import distilled_provenance

        return distilled_provenance(super().provenance(), self.meta)


class OnnxFusedEncoder(FusedReadout, OnnxDistilledEncoder):
    """`OnnxDistilledEncoder` and the BioLingual it was distilled from (``base``, any audio
    encoder of the same rate), over the same windows: ``[distilled (D) | BioLingual (d)]``."""

    name = "fused"

    def __init__(self, distilled: OnnxDistilledEncoder, base):
        self.__dict__.update(distilled.__dict__)
        self.base = base
        self.distilled_dim = distilled.dim
        self.base_in_dim = distilled.base_dim
        self.dim = distilled.dim + base.dim
        # Both towers read the same log-mels (one description and filter bank): each batch's
        # are computed once and fed to both (`_window_rows`); otherwise the base runs apart.
        self.shared_features = (
            isinstance(base, OnnxAudioEncoder)
            and base.features.describe() == self.features.describe()
            and np.array_equal(base.features.mel_filters, self.features.mel_filters)
        )

    def _window_rows(self, feats: np.ndarray) -> np.ndarray:
        rows = super()._window_rows(feats)
        if not self.shared_features:
            return rows
        return np.concatenate([rows, self.base._window_rows(feats)], axis=1)

    def _row_width(self) -> int:
        return super()._row_width() + (self.base._row_width() if self.shared_features else 0)

    def _forward(self, windows: list[np.ndarray]) -> np.ndarray:
        rows = super()._forward(windows)  # OnnxAudioEncoder's batching loop
        if self.shared_features:
            return rows
        return np.concatenate([rows, self.base._forward(windows)], axis=1)

    def provenance(self) -> dict:
        return {**super().provenance(), "encoder": self.name, "base": self.base.provenance()}
