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
from dataclasses import replace
from pathlib import Path

import numpy as np

from songsight.encoders.base import ClipEmbedding, l2_normalize
from songsight.encoders.biolingual import BioLingualEncoder
from songsight.encoders.loading import DISTILLED_MARKER, ResolvedModel, _dir_revision
from songsight.errors import InputFileError, ModelNotFoundError

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
    """(1, d) torch: what the head reads for a whole recording from its windows' audio
    embeddings (W, d) as the tower gives them: their mean as unit vectors (BioLingual's own
    clip embedding), scaled to their mean length (what the head was trained on)."""
    norms = base_windows.norm(dim=1, keepdim=True)
    return (base_windows / norms.clamp_min(1e-12)).mean(0, keepdim=True) * norms.mean()


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


def read_meta(path: str | Path) -> dict:
    return json.loads((find_checkpoint(path) / DISTILLED_MARKER).read_text())


class DistilledEncoder(BioLingualEncoder):
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
        resolved = ResolvedModel(ckpt / "clap", str(ckpt.resolve()), _dir_revision(ckpt), "local")
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

    # A recording's clip vector is the head reading the clip's audio embedding (the mean of
    # its windows' unit embeddings, at their mean length), as BioLingual's own zero-shot
    # classifies a clip, not the mean of the head's window outputs: averaging a cascade head's
    # per-window answers is a vote, and voting lost 4.6 points of top-1 against reading the
    # mean (simulated world, 4 s windows over 10 s clips; validation split).
    def _forward(self, windows: list[np.ndarray]) -> np.ndarray:
        """(W, D + d): each window's head output (unit norm) beside its audio embedding as the
        tower gives it; `embed_windows` splits them."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(windows), self.batch_size):
                feats = self.features(windows[i : i + self.batch_size], self.device)
                with torch.autocast(
                    self.device.split(":")[0],
                    dtype=self.autocast,
                    enabled=self.autocast is not None,
                ):
                    base = BioLingualEncoder._embed_features(self, feats).float()
                    emb = self.head(base).float()
                out.append(torch.cat([l2_normalize(emb), base], dim=1).cpu().numpy())
        width = self.dim + int(self.meta["head"]["in_dim"])
        return np.concatenate(out) if out else np.zeros((0, width), np.float32)

    def embed_windows(self, sources, window_s=None, hop_s=None, *, on_progress=None):
        """As `BioLingualEncoder.embed_windows`, each recording's clip vector read by the head
        from its mean audio embedding (see `pool_head`)."""
        for i, res in super().embed_windows(sources, window_s, hop_s, on_progress=on_progress):
            yield i, res if isinstance(res, InputFileError) else self._read_out(res)

    def _read_out(self, res: ClipEmbedding) -> ClipEmbedding:
        head_w, base_w = res.windows[:, : self.dim], res.windows[:, self.dim :]

        def pool(mask: np.ndarray | None) -> np.ndarray:
            return self.pool_head(base_w if mask is None else base_w[mask])

        return replace(res, windows=head_w, clip=pool(None), pool=pool)

    def pool_head(self, base_windows: np.ndarray) -> np.ndarray:
        """(D,) unit norm: the head's output for the mean of ``base_windows`` (W, d) (the
        tower's window embeddings) taken as unit vectors and scaled to their mean length."""
        import torch

        with torch.inference_mode():
            x = clip_input(torch.from_numpy(np.asarray(base_windows, np.float32)).to(self.device))
            return l2_normalize(self.head(x).float()).cpu().numpy()[0]

    def provenance(self) -> dict:
        prov = super().provenance()
        m = self.meta
        prov.update(
            {
                "distilled_from": m.get("audio_model"),
                "teacher": m.get("image_model"),
                "prompts": m.get("prompts"),
                "train_manifest_sha256": m.get("train_manifest_sha256"),
            }
        )
        return prov

    def species_embeddings(self) -> tuple[list[int], np.ndarray] | None:
        """The teacher targets the model was distilled on, if saved: (labels, (S, 768))."""
        f = self.checkpoint / "targets.npz"
        if not f.is_file():
            return None
        z = np.load(f)
        return z["labels"].tolist(), z["embeddings"].astype(np.float32)


class FusedAudioEncoder(DistilledEncoder):
    """A distilled encoder and the BioLingual it was distilled from, over the same windows
    (decoded once): embeddings ``[distilled (D) | BioLingual (d)]``, each part unit norm.

    For the ``fused`` readout (`songsight.distill.readout`), which needs both the distilled
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

    def _read_out(self, res: ClipEmbedding) -> ClipEmbedding:
        d = self.distilled_dim
        head_w, own = res.windows[:, :d], res.windows[:, d : d + self.base_in_dim]
        orig = res.windows[:, d + self.base_in_dim :]

        def pool(mask: np.ndarray | None) -> np.ndarray:
            keep = slice(None) if mask is None else mask
            return np.concatenate(
                [self.pool_head(own[keep]), l2_normalize(orig[keep].mean(0, keepdims=True))[0]]
            )

        return replace(
            res, windows=np.concatenate([head_w, orig], axis=1), clip=pool(None), pool=pool
        )

    def provenance(self) -> dict:
        return {**super().provenance(), "encoder": self.name, "base": self.base.provenance()}
