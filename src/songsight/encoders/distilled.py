"""The distilled audio encoder: BioLingual's audio tower + projection + a head into BioCLIP-2 space.

A checkpoint folder holds ``songsight_distilled.json`` (config and provenance: both base models'
ids and revisions, prompts, data manifest hash, package version), ``clap/`` (the fine-tuned
ClapModel with its preprocessor and tokenizer, saved as transformers saves BioLingual) and
``head.safetensors``. `DistilledEncoder` loads it and embeds audio as `BioLingualEncoder`
does, but into the teacher's 768-d space.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from songsight.encoders.base import l2_normalize
from songsight.encoders.biolingual import BioLingualEncoder
from songsight.encoders.heads import FusedReadout, HeadReadout, build_head
from songsight.encoders.loading import DISTILLED_MARKER, ResolvedModel, dir_revision
from songsight.errors import ModelNotFoundError


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a training output folder (its ``best/``, else ``last/``)."""
    p = Path(path).expanduser()
    for cand in (p, p / "best", p / "last"):
        if (cand / DISTILLED_MARKER).is_file():
            return cand
    raise ModelNotFoundError(
        f"no distilled checkpoint at {p}: expected {DISTILLED_MARKER} there or in best/ or "
        "last/. Train one with `songsight distill ... --out DIR`."
    )


def save_checkpoint(
    out_dir: str | Path,
    clap,
    feature_extractor,
    tokenizer,
    head,
    meta: dict,
    extra: dict | None = None,
    targets: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (to a temporary sibling, then renamed into place).

    ``extra``: {file name: object} saved with ``torch.save`` (the trainer's resume state);
    ``targets``: (labels (S,), teacher species embeddings (S, D)) kept as ``targets.npz``.
    """
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    old = out.with_name(out.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "clap").mkdir(parents=True)
    clap.save_pretrained(tmp / "clap")
    feature_extractor.save_pretrained(tmp / "clap")
    tokenizer.save_pretrained(tmp / "clap")
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
        str(tmp / "head.safetensors"),
    )
    for name, obj in (extra or {}).items():
        torch.save(obj, tmp / name)
    if targets is not None:
        np.savez(
            tmp / "targets.npz",
            labels=np.asarray(targets[0]),
            embeddings=np.asarray(targets[1], np.float32),
        )
    (tmp / DISTILLED_MARKER).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def distilled_provenance(tower: dict, meta: dict) -> dict:
    """A distilled encoder's provenance: its tower's (``tower``), and from the checkpoint's
    ``meta`` what it was distilled from and towards (the same whatever runs the tower)."""
    return {
        **tower,
        "distilled_from": meta.get("audio_model"),
        "teacher": meta.get("image_model"),
        "prompts": meta.get("prompts"),
        "train_manifest_sha256": meta.get("train_manifest_sha256"),
    }


def checkpoint_model(checkpoint: str | Path) -> ResolvedModel:
    """The checkpoint folder's tower as a model to load or export: its ``clap/`` folder, named
    by the checkpoint's path and revised by its files."""
    ckpt = find_checkpoint(checkpoint)
    return ResolvedModel(ckpt / "clap", str(ckpt.resolve()), dir_revision(ckpt), "local")


def read_meta(path: str | Path) -> dict:
    return json.loads((find_checkpoint(path) / DISTILLED_MARKER).read_text())


class DistilledEncoder(HeadReadout, BioLingualEncoder):
    """Audio -> BioCLIP-2 space (768-d, unit norm). Same windowing and batching as BioLingual."""

    name = "distilled"

    def __init__(
        self,
        checkpoint: str | Path,
        device: str | None = None,
        batch_size: int = 16,
        window_s: float | None = None,
        hop_s: float | None = None,
        precision: str = "auto",
        decode_threads: int | None = None,
    ):
        from safetensors.torch import load_file

        ckpt = find_checkpoint(checkpoint)
        self.meta = json.loads((ckpt / DISTILLED_MARKER).read_text())
        self.checkpoint = ckpt
        resolved = checkpoint_model(ckpt)
        super().__init__(
            resolved,
            device=device,
            batch_size=batch_size,
            window_s=window_s,
            hop_s=hop_s,
            precision=precision,
            decode_threads=decode_threads,
        )
        h = self.meta["head"]
        self.head = (
            build_head(h["in_dim"], h["out_dim"], h["kind"], h.get("hidden"), h.get("n_species"))
            .to(self.device)
            .eval()
        )
        self.head.load_state_dict(load_file(str(ckpt / "head.safetensors")))
        self.head.requires_grad_(False)
        self.dim = int(h["out_dim"])

    def _output_dim(self) -> int:  # the head is built after the base class asks
        return int(self.meta["head"]["out_dim"])

    def _embed_features(self, feats):
        return self.head(super()._embed_features(feats))

    def _head_numpy(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.head(torch.from_numpy(np.asarray(x, np.float32)).to(self.device)).float().cpu().numpy()  # fmt: skip

    def _window_rows(self, feats):
        """(B, D + d): each window's head output (unit norm) beside its audio embedding as the
        tower gives it; `embed_windows` splits them."""
        import torch

        base = BioLingualEncoder._embed_features(self, feats).float()
        return torch.cat([l2_normalize(self.head(base).float()), base], dim=1)

    def _row_width(self) -> int:
        return self.dim + int(self.meta["head"]["in_dim"])

    def provenance(self) -> dict:
        return distilled_provenance(super().provenance(), self.meta)

    def species_embeddings(self) -> tuple[list[int], np.ndarray] | None:
        """The teacher targets the model was distilled on, if saved: (labels, (S, 768))."""
        f = self.checkpoint / "targets.npz"
        if not f.is_file():
            return None
        z = np.load(f)
        return z["labels"].tolist(), z["embeddings"].astype(np.float32)


class FusedAudioEncoder(FusedReadout, DistilledEncoder):
    """A distilled encoder and the BioLingual it was distilled from, over the same windows
    (decoded once): embeddings ``[distilled (D) | BioLingual (d)]``, each part unit norm.

    For the ``fused`` readout (`songsight.readout`), which needs both the distilled
    posterior and BioLingual's own zero-shot one; `distilled_dim` says where to split.
    """

    name = "fused"

    def __init__(self, distilled: DistilledEncoder, base_model):
        self.__dict__.update(distilled.__dict__)
        self.base = BioLingualEncoder(
            base_model,
            device=distilled.device,
            batch_size=distilled.batch_size,
            precision=distilled.precision,
        )
        if self.base.sample_rate_hz != self.sample_rate_hz:
            raise ModelNotFoundError(
                f"the base model {base_model} reads {self.base.sample_rate_hz} Hz audio and the "
                f"distilled one {self.sample_rate_hz} Hz: it is not the model it was distilled from"
            )
        self.distilled_dim = distilled.dim
        self.base_in_dim = int(distilled.meta["head"]["in_dim"])
        self.dim = distilled.dim + self.base.dim

    def _forward(self, windows: list[np.ndarray]) -> np.ndarray:
        """(W, D + d + d'): the distilled head output and audio embedding (as
        `DistilledEncoder._forward`), then BioLingual's unit embedding."""
        return np.concatenate([super()._forward(windows), self.base._forward(windows)], axis=1)

    def provenance(self) -> dict:
        return {**super().provenance(), "encoder": self.name, "base": self.base.provenance()}
