"""The models of a distillation run: the frozen teacher's targets, the student under its new head,
the head's starting point, and the module that trains.

Built by `songsight.distill.setup.build_run`; nothing here runs the loop.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np

from songsight.config import DistillConfig
from songsight.data.manifest import load_manifest
from songsight.distill.data import AudioCrops
from songsight.distill.hooks import DistillHooks, timed_phase
from songsight.distill.probe_init import fit_probe_head, probe_rows
from songsight.distill.targets import teacher_targets
from songsight.encoders.heads import build_head, make_student


def select_trainable(student, clap, cfg: DistillConfig) -> None:
    """Freeze everything, then unfreeze what ``cfg.train`` names (the head always learns)."""
    student.requires_grad_(False)
    student.head.requires_grad_(True)
    if cfg.train in ("projection", "top-k-blocks", "all"):
        student.audio_projection.requires_grad_(True)
    if cfg.train == "all":
        student.audio_model.requires_grad_(True)
    elif cfg.train == "top-k-blocks":
        enc = student.audio_model.audio_encoder
        for layer in list(enc.layers)[-cfg.top_k_blocks :]:
            layer.requires_grad_(True)
        enc.norm.requires_grad_(True)


def freeze_batchnorm(module) -> None:
    """HTSAT's input BatchNorm stays in eval mode: small per-device batches would otherwise
    replace its statistics, and DDP ranks would normalise differently from one process."""
    from torch import nn

    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def embed_base(student, data: AudioCrops, rows: np.ndarray, features, device: str, batch: int):
    """(len(rows), d) unnormalised base audio embeddings of clips (their first window, no
    augmentation), as the head receives them."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(rows), batch):
            waves = [data.waveform(int(j))[: data.window] for j in rows[i : i + batch]]
            out.append(student(features(waves, device))[1].float().cpu().numpy())
    return np.concatenate(out)


def load_teacher(image_model, species, cfg: DistillConfig, device: str, cache_dir, val_gallery,
                 hooks: DistillHooks):  # fmt: skip
    """(targets (S, D) float32 unit rows, prompt record, teacher provenance, gallery or None):
    everything the frozen teacher gives, after which it is dropped (it never runs in the loop).
    ``gallery``: ((G, D) image embeddings, (G,) labels) of ``val_gallery``'s photos."""
    from songsight.encoders.runtime import open_torch_encoder

    with timed_phase(hooks, "teacher_load"):  # frozen, and text and photos: torch's
        teacher = open_torch_encoder(
            image_model, "image", device=device if device.startswith("cuda") else "cpu"
        )
    with timed_phase(hooks, "teacher_targets"):
        targets, target_info = teacher_targets(
            teacher, species, cfg.prompt_format, cfg.templates, cache_dir
        )
    gallery = None
    if val_gallery is not None:
        gdf = load_manifest(val_gallery, species=species)
        gallery = (teacher.embed_images(list(gdf["path"])), gdf["label"].to_numpy())
    return targets, target_info, teacher.provenance(), gallery


@dataclass
class Student:
    """The student side, built from BioLingual: its audio tower and projection under a new head
    (``student``), the parts a checkpoint saves again, and the cascade's text view."""

    clap: Any  # the ClapModel (its text tower never trains)
    features: Any  # ClapFeatures: waveforms -> the model's log-mel batch on the device
    extractor: Any  # ClapFeatureExtractor, saved with each checkpoint
    tokenizer: Any
    window_s: float  # the training crop and validation window
    audio_text: np.ndarray  # (S, d) BioLingual's species text embeddings, unit rows
    cascade_temperature: float
    head: Any
    student: Any  # make_student(clap, head): feats -> (head output, base embedding)


def load_student(audio_res, species, cfg: DistillConfig, out_dim: int, device: str,
                 hooks: DistillHooks) -> Student:  # fmt: skip
    """BioLingual loaded once, as an encoder: its text side gives the cascade's species
    embeddings, its audio tower and projection become the student under a new head."""
    from transformers import ClapFeatureExtractor

    from songsight.encoders.prompts import embed_species_text
    from songsight.encoders.runtime import open_torch_encoder

    with timed_phase(hooks, "student_load"):  # it trains: torch
        base_encoder = open_torch_encoder(audio_res, "audio", device=device)
    clap, features = base_encoder.model, base_encoder.features
    extractor = ClapFeatureExtractor.from_pretrained(audio_res.path)
    window_s = cfg.window_s or features.max_samples / features.sample_rate_hz
    audio_text = embed_species_text(
        base_encoder, species, cfg.audio_prompt_format, cfg.audio_templates
    )
    cascade_temperature = float(1.0 / clap.logit_scale_a.detach().float().exp().cpu())
    # A placeholder of the configured shape; `init_head` puts the starting head in its place.
    kind = "linear" if cfg.head == "auto" else cfg.head
    head = build_head(
        int(clap.config.projection_dim), out_dim, kind, cfg.head_hidden, len(species)
    ).to(device)
    student = make_student(clap, head).eval()
    return Student(
        clap, features, extractor, base_encoder.tokenizer, window_s, audio_text,
        cascade_temperature, head, student,
    )  # fmt: skip


def head_candidates(cfg: DistillConfig) -> tuple[str, ...]:
    """The starting heads a run tries (`init_head`), by name: ``probe`` (a linear head fitted
    on the untouched embeddings), ``cascade`` (the zero-shot cascade as it is) and
    ``cascade_fit`` (the cascade head fitted on the untouched embeddings)."""
    if cfg.head == "auto":
        return ("probe", "cascade", "cascade_fit")
    if cfg.head == "cascade":
        return ("cascade_fit",) if cfg.head_init == "probe" else ("cascade",)
    if cfg.head == "linear" and cfg.head_init == "probe":
        return ("probe",)
    return ("random",)


def _start(name: str, st: Student, all_targets: np.ndarray, cfg: DistillConfig, device: str):
    """A fresh head for candidate ``name`` (before any fitting)."""
    from songsight.encoders.heads import init_cascade_head

    in_dim, out_dim, n = int(st.clap.config.projection_dim), all_targets.shape[1], len(all_targets)
    if name.startswith("cascade"):
        head = build_head(in_dim, out_dim, "cascade", n_species=n)
        return init_cascade_head(head, st.audio_text, all_targets, st.cascade_temperature).to(
            device
        )
    kind = "linear" if cfg.head == "auto" else cfg.head
    return build_head(in_dim, out_dim, kind, cfg.head_hidden, n).to(device)


def init_head(st: Student, logit_scale, data: AudioCrops, train_targets, all_targets: np.ndarray,
              cfg: DistillConfig, batch_size: int, device: str, resume_kind: str | None,
              validator=None, candidate_rows=None) -> dict | str:  # fmt: skip
    """Put the run's starting head (and temperature) in place; returns the checkpoint's record
    of how the head began.

    Each of `head_candidates` is built and, where it says so, fitted on the untouched
    embeddings (`songsight.distill.probe_init`: Kumar et al.'s LP-FT); with several, the one
    whose validation score is best starts the run (no validation: the cascade as it is, which
    cannot start below the cascade). ``resume_kind``: the head kind of a run being resumed,
    built empty for its saved weights.
    """
    import copy

    import torch

    if resume_kind is not None:
        _set_head(st, _start("cascade" if resume_kind == "cascade" else "random", st, all_targets, cfg, device))  # fmt: skip
        return "resumed"
    names = head_candidates(cfg)
    base = labels = None
    if names != ("random",):
        rows = probe_rows(data.labels, cfg.seed)
        base = embed_base(st.student, data, rows, st.features, device, batch_size)
        labels = data.labels[rows]
    tried: dict[str, tuple] = {}
    for name in names:
        head, scale = _start(name, st, all_targets, cfg, device), copy.deepcopy(logit_scale)
        kind = "cascade" if name.startswith("cascade") else ("linear" if cfg.head == "auto" else cfg.head)  # fmt: skip
        note: dict = {"kind": kind, "start": name}
        if name != "random":  # the temperature always, the head itself unless "cascade"
            note.update(fit_probe_head(
                head, scale, build_loss(cfg, head, frozen=True), base, labels, train_targets,
                cfg.seed, fit_head=name != "cascade", columns=candidate_rows,
            ))  # fmt: skip
        tried[name] = (head, scale, note)
    chosen = names[0]
    if len(names) > 1:
        scores = {}
        for name, (head, scale, _) in tried.items():
            _set_head(st, head)
            scores[name] = (
                float(validator(st.student, float(scale().detach().cpu()))["val_score"])
                if validator is not None
                else None
            )
        if validator is not None:
            chosen = max(scores, key=scores.get)
        else:
            chosen = "cascade"
        tried[chosen][2]["candidates"] = scores
    head, scale, note = tried[chosen]
    _set_head(st, head)
    with torch.no_grad():
        logit_scale.log_scale.copy_(scale.log_scale)
    if chosen == "random":
        return (
            "random (the probe initialisation needs the linear head)"
            if cfg.head_init == "probe"
            else "random"
        )
    return note


def _set_head(st: Student, head) -> None:
    st.head = head
    st.student.head = head


def wrap_trainable(st: Student, logit_scale, cfg: DistillConfig, device: str, world: int,
                   local_rank: int):  # fmt: skip
    """(module, model, original): the student and temperature as one module with only what
    ``cfg.train`` names learning, the same under DDP when ``world > 1``, and a frozen copy of
    the untouched base model when the preservation loss needs one (else None)."""
    import torch

    from songsight.distill.train_module import TrainModule

    select_trainable(st.student, st.clap, cfg)
    original = None
    if cfg.preserve_weight > 0 and cfg.train != "head":
        original = (
            copy.deepcopy(make_student(st.clap, torch.nn.Identity())).eval().requires_grad_(False)
        )
    module = TrainModule(st.student, logit_scale).to(device)
    model = module
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[local_rank] if device.startswith("cuda") else None
        )
    return module, model, original


def loss_candidates(all_targets: np.ndarray, by_label: dict, train_labels: list[int],
                    cfg: DistillConfig, device: str):  # fmt: skip
    """(target row of each label, (C, D) candidate targets on ``device``, the candidates' rows
    among every species (a tensor, or None for all of them)) for the class-level loss: every
    species of the table (the default) or only the trained ones.

    The names of species without audio are negatives that cost nothing, and without them
    nothing keeps a clip away from those species' targets: in the simulated world, a probe's
    zero-shot top-1 over all 60 species was 53% with the 48 trained ones as candidates and 75%
    with all 60 (on the trained species alone, 75% either way)."""
    import torch

    if cfg.candidates == "all":
        return by_label, torch.from_numpy(all_targets).to(device), None
    rows = [by_label[lab] for lab in train_labels]
    return (
        {lab: i for i, lab in enumerate(train_labels)},
        torch.from_numpy(all_targets[rows]).to(device),
        torch.tensor(rows, device=device),
    )


def build_temperature(cfg: DistillConfig, device: str):
    """The readouts' temperature module (`songsight.distill.loss.LogitScale`) on ``device``."""
    from songsight.distill.loss import LogitScale

    return LogitScale(
        cfg.init_temperature, learnable=cfg.learn_temperature, max_scale=1.0 / cfg.min_temperature
    ).to(device)


def loss_form(cfg: DistillConfig, head) -> str:
    """The loss form for ``head``: ``cfg.loss``, where ``auto`` is ``species`` for a cascade
    head (its own species logits) and ``class`` for the others."""
    cascade = hasattr(head, "species_logits")
    form = ("species" if cascade else "class") if cfg.loss == "auto" else cfg.loss
    if form == "species" and not cascade:
        from songsight.errors import SongsightError

        raise SongsightError("--loss species needs a head that scores species: --head cascade")
    return form


def build_loss(cfg: DistillConfig, head, frozen: bool = False):
    """The distillation loss for ``head`` as ``cfg`` sets it. ``frozen``: for a fit on frozen
    embeddings (`init_head`), where the backbone does not move (no preservation term) and
    each process fits alone (the class-level form, never the batch form's gather across
    ranks)."""
    from songsight.distill.loss import DistillationLoss

    form = loss_form(cfg, head)
    return DistillationLoss(
        "class" if frozen and form == "batch" else form,
        0.0 if frozen else cfg.preserve_weight,
        cfg.preserve_kind,
        cfg.positives,
        target_weight=cfg.target_weight,
        target_kind=cfg.target_kind,
    )
