"""Pretrain the simulated world's tiny stand-ins for BioCLIP-2 (teacher) and BioLingual (student).

* `pretrain_teacher`: an open_clip CLIP (tiny ViT + CLIP text transformer) trained
  contrastively on ``pretrain/photos.csv`` (TreeOfLife-like captions), saved in open_clip's
  layout (loadable by `BioCLIPEncoder`).
* `pretrain_student`: a transformers ``ClapModel`` (tiny unfused HTSAT + RoBERTa) with a BPE
  tokenizer trained on ``pretrain/calls.csv`` (AnimalSpeak-like captions), saved as
  BioLingual is (loadable by `BioLingualEncoder`). A tiny HTSAT trained end to end against its
  text tower stays at chance, so it learns in two stages, as CLAP's HTSAT was first an
  AudioSet classifier: (1) the audio tower with a linear species head (cross-entropy), then
  (2) with the audio tower frozen, both projections and the text tower contrastively.
* `pretrain_stand_ins`: both, cached in ``models_dir/{teacher,student}`` under a key of the
  world (config and a fingerprint of its pretraining data), the recipe and the seed; a
  matching zip in ``songsight/sim/assets`` (written by ``scripts/pretrain_stand_ins.py``) is
  unpacked instead of training. When both must train, they train at once in two processes,
  each with half the cores (one each on two cores): tiny models gain little from threads.

Both models train on the exact inputs their loaders produce (`load_open_clip`'s transform
and tokenizer, `ClapFeatures` log-mels of the encoder's windows) and report zero-shot species
accuracy on a held-out fifth of the pretraining items: photos against each species'
``taxon_com`` text, calls (mean of window embeddings) against its common name through the
``sound`` templates, as `songsight.eval` builds them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from songsight.errors import DataNotFoundError, SongsightError
from songsight.provenance import environment, stable_hash
from songsight.taxonomy import TEMPLATE_SETS, load_species_csv
from songsight.testing import TinyClapSpec, TinyClipSpec

# Part of every cache key: bump it when a change to the training code changes the models.
FORMAT = "songsight.sim.pretrain/1"
RECORD = "pretrain.json"
ASSETS_DIR = Path(__file__).parent / "assets"
ROLES = ("teacher", "student")
VAL_FRACTION = 0.2
STUDENT_PROMPTS = ("com", "sound")  # as songsight.eval builds BioLingual's species text
TEACHER_PROMPTS = ("taxon_com", "none")  # as it builds BioCLIP-2's

# Chosen by scripts/pretrain_stand_ins.py on the default world (seed 0); see its docstring.
TEACHER_SPEC = TinyClipSpec(embed_dim=48, image_size=32, patch_size=4, context_length=48)
STUDENT_SPEC = TinyClapSpec(
    window_s=4, n_mels=16, n_fft=2048, hop_length=1024, spec_size=32, patch_hidden=32,
    depths=(2, 2), heads=(2, 4), vocab_size=1000, max_text_tokens=48, dropout=0.0, corpus=[],
)  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    """Shapes and schedules of both stand-ins. Student steps and lr: (audio stage, align stage)."""

    name: str
    teacher_steps: int
    teacher_batch: int
    student_steps: tuple[int, int]
    student_batch: int
    teacher_lr: float = 2e-3
    student_lr: tuple[float, float] = (5e-3, 3e-3)
    teacher_spec: TinyClipSpec = field(default_factory=lambda: TEACHER_SPEC)
    student_spec: TinyClapSpec = field(default_factory=lambda: STUDENT_SPEC)

    def part(self, role: str) -> dict:
        """The fields that determine one role's model (its cache key)."""
        d = asdict(self)
        return {k: v for k, v in d.items() if k.startswith(role)} | {"val_fraction": VAL_FRACTION}


RECIPES = {
    "default": Recipe("default", teacher_steps=1200, teacher_batch=64, student_steps=(1500, 1000), student_batch=64),
    "quick": Recipe("quick", teacher_steps=300, teacher_batch=32, student_steps=(300, 300), student_batch=32),
}  # fmt: skip


# ---- data -----------------------------------------------------------------------------------


def read_pairs(pretrain_dir: str | Path, name: str) -> tuple[list[Path], list[str], np.ndarray]:
    """``pretrain/{name}.csv`` -> (absolute paths, captions, (N,) int64 labels)."""
    table = Path(pretrain_dir) / f"{name}.csv"
    if not table.is_file():
        raise DataNotFoundError(
            f"pretraining caption set not found: {table} (export a world with songsight.sim.export)"
        )
    with table.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise DataNotFoundError(f"{table} lists no items")
    paths = [table.parent / r["path"] for r in rows]
    return paths, [r["caption"] for r in rows], np.array([int(r["label"]) for r in rows], np.int64)


def holdout_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """(N,) bool, True for held-out items: ``round(fraction * n)`` of each species' ``n`` items,
    at least one and at most ``n - 1`` (none when ``n == 1``), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), bool)
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        k = min(len(idx) - 1, max(1, int(round(fraction * len(idx)))))
        held[rng.choice(idx, k, replace=False)] = True
    return held


def _species(pretrain_dir: Path, labels: np.ndarray):
    species = load_species_csv(pretrain_dir.parent / "taxa.csv")
    if [s.label for s in species] != list(range(len(species))) or labels.max() >= len(species):
        raise DataNotFoundError(
            f"{pretrain_dir.parent / 'taxa.csv'}: labels must run 0..K-1 and cover the pretraining sets"
        )
    return species


def _schedule(opt, total: int):
    """Linear warmup over a tenth of the steps, then cosine to zero."""
    import torch

    warmup = max(1, total // 10)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


def _step(opt, sched, loss) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()


def _augment(x, rng: np.random.Generator, shift_px: int):
    """Random horizontal flips and shifts of up to ``shift_px`` (reflect-padded): (B, 3, H, W)."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = x.shape
    padded = F.pad(x, (shift_px,) * 4, mode="reflect")
    dy, dx = rng.integers(0, 2 * shift_px + 1, (2, b))
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    flip = torch.from_numpy(rng.random(b) < 0.5)
    out[flip] = out[flip].flip(-1)
    return out


def _accuracy(emb: np.ndarray, class_emb: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean((emb @ class_emb.T).argmax(1) == labels)) if len(labels) else float("nan")


# ---- teacher --------------------------------------------------------------------------------


def pretrain_teacher(
    pretrain_dir: str | Path,
    out_dir: str | Path,
    spec: TinyClipSpec,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
    shift_px: int = 4,
) -> dict:
    """Train a tiny open_clip CLIP on photo-caption pairs; write it to ``out_dir`` (open_clip layout).

    Symmetric InfoNCE (`batch_level_infonce`, same-species pairs positive) with a learnable
    `LogitScale`, AdamW, warmup + cosine, flip/shift augmentation. Returns zero-shot accuracy
    of held-out photos against the species' ``taxon_com`` embeddings (and on training photos).
    """
    import torch

    from songsight.distill.loss import LogitScale, batch_level_infonce
    from songsight.encoders.base import l2_normalize
    from songsight.encoders.bioclip import load_open_clip
    from songsight.images import load_image
    from songsight.testing import build_tiny_open_clip

    t0, c0 = time.perf_counter(), time.process_time()
    pretrain_dir, out = Path(pretrain_dir), Path(out_dir)
    paths, captions, labels = read_pairs(pretrain_dir, "photos")
    species = _species(pretrain_dir, labels)
    held = holdout_mask(labels, VAL_FRACTION, seed)
    build_tiny_open_clip(out, spec, seed=seed)
    # Train on exactly what BioCLIPEncoder feeds the model: its transform, its tokenizer.
    net, transform, tokenizer, _, _ = load_open_clip(out)
    images = torch.stack([transform(load_image(p)) for p in paths])
    tokens, lab = tokenizer(captions), torch.from_numpy(labels)
    scale = LogitScale()
    opt = torch.optim.AdamW([*net.parameters(), *scale.parameters()], lr=lr, weight_decay=0.0)
    sched = _schedule(opt, steps)
    train = np.flatnonzero(~held)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net.train()
    for _ in range(steps):
        b = torch.from_numpy(rng.choice(train, min(batch_size, len(train)), replace=False))
        img = l2_normalize(net.encode_image(_augment(images[b], rng, shift_px)))
        txt = l2_normalize(net.encode_text(tokens[b]))
        _step(opt, sched, batch_level_infonce(img, txt, lab[b], scale()))
    net.eval()
    with torch.no_grad():
        net.logit_scale.copy_(scale().log())
        # Token rows no training caption used hold only their random init: zero them, so the
        # 49,408-row table compresses to the rows that mean something.
        unused = torch.ones(net.token_embedding.weight.shape[0], dtype=torch.bool)
        unused[tokens[torch.from_numpy(train)].unique()] = False
        net.token_embedding.weight[unused] = 0.0
        img_emb = torch.cat(
            [
                l2_normalize(net.encode_image(images[i : i + 512]))
                for i in range(0, len(images), 512)
            ]
        ).numpy()
        fmt, tmpl = TEACHER_PROMPTS
        prompts = [t.format(s.prompt(fmt)) for s in species for t in TEMPLATE_SETS[tmpl]]
        cls = l2_normalize(net.encode_text(tokenizer(prompts))).reshape(
            len(species), -1, net.text_projection.shape[1]
        )
        cls = l2_normalize(cls.mean(1)).numpy()
    build_tiny_open_clip(out, spec, model=net)
    return {
        "zero_shot_acc": _accuracy(img_emb[held], cls, labels[held]),
        "train_zero_shot_acc": _accuracy(img_emb[~held], cls, labels[~held]),
        "chance": 1.0 / len(species), "n_held_out": int(held.sum()), "n_train": int((~held).sum()),
        "prompts": list(TEACHER_PROMPTS), "logit_scale": float(scale().detach()),
        "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
    }  # fmt: skip


# ---- student --------------------------------------------------------------------------------


def call_windows(paths: list[Path], features, window_s: float, hop_s: float):
    """Log-mels of every window `BioLingualEncoder` cuts from each clip.

    Returns ((W, 1, frames, mels) float32 tensor, (W,) int64 clip index of each window).
    """
    import torch

    from songsight.audio import load_audio, window_bounds

    waves, owner = [], []
    for i, p in enumerate(paths):
        wave = load_audio(p, features.sample_rate_hz).waveform
        for a, b in window_bounds(len(wave), features.sample_rate_hz, window_s, hop_s):
            waves.append(wave[a:b])
            owner.append(i)
    feats = torch.cat([features(waves[i : i + 128]) for i in range(0, len(waves), 128)])
    return feats, np.array(owner, np.int64)


def pretrain_student(
    pretrain_dir: str | Path,
    out_dir: str | Path,
    spec: TinyClapSpec,
    steps: tuple[int, int],
    lr: tuple[float, float],
    batch_size: int,
    seed: int = 0,
) -> dict:
    """Train a tiny ClapModel on call-caption pairs; write it to ``out_dir`` (BioLingual's layout).

    Stage 1 (``steps[0]`` at ``lr[0]``): the HTSAT audio tower and a linear species head, by
    cross-entropy on analysis windows; its input BatchNorm is set from the training windows
    and frozen. Stage 2 (``steps[1]`` at ``lr[1]``): the audio tower frozen (its pooled
    outputs computed once); audio and text projections and the text tower by symmetric InfoNCE
    (`batch_level_infonce`) with a learnable `LogitScale`. Returns held-out zero-shot accuracy
    of clips against the species' common names through the ``sound`` templates.
    """
    import torch
    from torch import nn
    from transformers.utils import logging as hf_logging

    from songsight.distill.loss import LogitScale, batch_level_infonce
    from songsight.encoders.base import l2_normalize
    from songsight.encoders.biolingual import DEFAULT_HOP_FRACTION, load_clap
    from songsight.testing import build_tiny_clap, build_tokenizer

    hf_logging.disable_progress_bar()  # save_pretrained's per-shard bar, as load_clap does
    t0, c0 = time.perf_counter(), time.process_time()
    pretrain_dir, out = Path(pretrain_dir), Path(out_dir)
    paths, captions, labels = read_pairs(pretrain_dir, "calls")
    species = _species(pretrain_dir, labels)
    held = holdout_mask(labels, VAL_FRACTION, seed)
    tok = build_tokenizer(captions, spec.vocab_size, spec.max_text_tokens)
    build_tiny_clap(out, spec, seed=seed, tokenizer=tok)
    # Train on exactly what BioLingualEncoder feeds the model: its windows, its log-mels.
    clap, features, tokenizer, _ = load_clap(out)
    window_s = features.max_samples / features.sample_rate_hz
    feats, owner = call_windows(paths, features, window_s, window_s * DEFAULT_HOP_FRACTION)
    wlab, train = torch.from_numpy(labels[owner]), np.flatnonzero(~held[owner])
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    audio = clap.audio_model
    bn = audio.audio_encoder.batch_norm
    with torch.no_grad():
        x = feats[torch.from_numpy(train), 0]  # (W, frames, mels)
        bn.running_mean.copy_(x.mean(dim=(0, 1)))
        bn.running_var.copy_(x.var(dim=(0, 1)))
    head = nn.Linear(audio.config.hidden_size, len(species))
    bn.requires_grad_(False)
    params = [p for p in [*audio.parameters(), *head.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr[0], weight_decay=0.01)
    sched = _schedule(opt, steps[0])
    audio.train()
    bn.eval()
    for _ in range(steps[0]):
        b = torch.from_numpy(rng.choice(train, min(batch_size, len(train)), replace=False))
        logits = head(audio(input_features=feats[b]).pooler_output)
        _step(opt, sched, nn.functional.cross_entropy(logits, wlab[b]))
    audio.eval().requires_grad_(False)
    with torch.no_grad():
        pooled = torch.cat(
            [
                audio(input_features=feats[i : i + 256]).pooler_output
                for i in range(0, len(feats), 256)
            ]
        )
    text = tokenizer(captions, padding=True, truncation=True, return_tensors="pt")
    parts = (clap.audio_projection, clap.text_model, clap.text_projection)
    scale = LogitScale()
    opt = torch.optim.AdamW(
        [*(p for m in parts for p in m.parameters()), *scale.parameters()],
        lr=lr[1],
        weight_decay=0.01,
    )
    sched = _schedule(opt, steps[1])
    for m in parts:
        m.train()
    clip_of = torch.from_numpy(owner)
    for _ in range(steps[1]):
        b = torch.from_numpy(rng.choice(train, min(batch_size, len(train)), replace=False))
        a = l2_normalize(clap.audio_projection(pooled[b]))
        c = clip_of[b]
        t = clap.text_model(
            input_ids=text["input_ids"][c], attention_mask=text["attention_mask"][c]
        ).pooler_output
        _step(
            opt,
            sched,
            batch_level_infonce(a, l2_normalize(clap.text_projection(t)), wlab[b], scale()),
        )
    clap.eval()
    with torch.no_grad():
        clap.logit_scale_a.copy_(scale().log())
        clap.logit_scale_t.copy_(scale().log())
        win = l2_normalize(clap.audio_projection(pooled)).numpy()
        fmt, tmpl = STUDENT_PROMPTS
        enc = tokenizer(
            [t.format(s.prompt(fmt)) for s in species for t in TEMPLATE_SETS[tmpl]],
            padding=True,
            truncation=True,
            return_tensors="pt",
        )
        cls = l2_normalize(clap.text_projection(clap.text_model(**enc).pooler_output))
        cls = l2_normalize(cls.reshape(len(species), len(TEMPLATE_SETS[tmpl]), -1).mean(1)).numpy()
    clip = np.zeros((len(paths), win.shape[1]), np.float32)
    np.add.at(clip, owner, win)  # the encoder's clip embedding: mean of unit window embeddings
    clip = l2_normalize(clip)
    build_tiny_clap(out, spec, model=clap, tokenizer=tokenizer)
    return {
        "zero_shot_acc": _accuracy(clip[held], cls, labels[held]),
        "train_zero_shot_acc": _accuracy(clip[~held], cls, labels[~held]),
        "chance": 1.0 / len(species), "n_held_out": int(held.sum()), "n_train": int((~held).sum()),
        "prompts": list(STUDENT_PROMPTS), "logit_scale": float(scale().detach()), "window_s": window_s,
        "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
    }  # fmt: skip


# ---- cache, assets, both models -------------------------------------------------------------


def stand_in_key(world_dir: str | Path, role: str, recipe: Recipe, seed: int) -> dict:
    """What determines one stand-in: world config, a fingerprint of its data, recipe, seed.

    The fingerprint hashes ``taxa.csv``, the role's caption CSV and the bytes of each species'
    first item, so a change to how the world renders (same config) changes the key too.
    Returns ``{"key": 16 hex digits, ...the parts it hashes}``.
    """
    world_dir = Path(world_dir)
    record = world_dir / "world.json"
    if not record.is_file():
        raise DataNotFoundError(
            f"{record} not found: export a world first (songsight.sim.export.export_world)"
        )
    name = "photos" if role == "teacher" else "calls"
    paths, _, labels = read_pairs(world_dir / "pretrain", name)
    h = hashlib.sha256()
    for f in [world_dir / "taxa.csv", world_dir / "pretrain" / f"{name}.csv"] + [
        paths[int(np.argmax(labels == lab))] for lab in np.unique(labels)
    ]:
        h.update(f.read_bytes())
    parts = {
        "format": FORMAT, "role": role, "seed": int(seed), "recipe": recipe.name, "recipe_fields": recipe.part(role),
        "world_config": json.loads(record.read_text(encoding="utf-8"))["config"], "data_fingerprint": h.hexdigest()[:16],
    }  # fmt: skip
    return {"key": stable_hash(parts), **parts}


def read_record(model_dir: str | Path) -> dict | None:
    """A stand-in folder's ``pretrain.json``, or None when absent or unreadable."""
    try:
        return json.loads((Path(model_dir) / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _replace_dir(tmp: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def evaluate_stand_in(
    role: str, model_dir: str | Path, world_dir: str | Path, per_species: int = 5
) -> dict | None:
    """Zero-shot species accuracy of a saved stand-in, through its real encoder, on the world's
    SSW60-layout test split: the first ``per_species`` test clips (student) or NABirds and
    iNat test photos each (teacher) of every species. None when the world has no such split.
    """
    from songsight.data.ssw60 import SSW60
    from songsight.encoders.base import l2_normalize

    try:
        ds = SSW60(world_dir, warn_missing=False)
        table = ds.images("all", "test") if role == "teacher" else ds.audio("test")
    except DataNotFoundError:
        return None
    table = table.groupby(["label", "source"], sort=False).head(per_species)
    paths, labels = table["path"].tolist(), table["label"].to_numpy()
    if role == "teacher":
        from songsight.encoders.bioclip import BioCLIPEncoder

        enc = BioCLIPEncoder(model_dir, device="cpu")
        emb, cls = enc.embed_images(paths), enc.embed_species(ds.species, *TEACHER_PROMPTS)
    else:
        from songsight.encoders.biolingual import BioLingualEncoder

        enc = BioLingualEncoder(model_dir, device="cpu")
        fmt, tmpl = STUDENT_PROMPTS
        prompts = [t.format(s.prompt(fmt)) for s in ds.species for t in TEMPLATE_SETS[tmpl]]
        cls = enc.embed_texts(prompts).reshape(len(ds.species), len(TEMPLATE_SETS[tmpl]), -1)
        emb, cls = enc.embed_audio(paths), l2_normalize(cls.mean(axis=1))
    return {
        "zero_shot_acc": _accuracy(emb, cls, labels),
        "n": len(labels),
        "chance": 1.0 / len(ds.species),
    }


def train_stand_in(
    world_dir: str | Path,
    models_dir: str | Path,
    role: str,
    recipe: Recipe,
    seed: int = 0,
    threads: int | None = None,
) -> dict:
    """Train one role into ``models_dir/role`` (atomically, ``pretrain.json`` last); its record.

    The record holds the key's parts, the training result (held-out accuracy, timings) and
    ``ssw_test``: `evaluate_stand_in` of the saved model.
    """
    import torch

    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    key = stand_in_key(world_dir, role, recipe, seed)
    out = Path(models_dir) / role
    tmp = out.with_name(f".{role}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        pretrain, r = Path(world_dir) / "pretrain", recipe
        if role == "teacher":
            args = (r.teacher_spec, r.teacher_steps, r.teacher_lr, r.teacher_batch, seed)
            result = pretrain_teacher(pretrain, tmp, *args)
        else:
            args = (r.student_spec, r.student_steps, r.student_lr, r.student_batch, seed)
            result = pretrain_student(pretrain, tmp, *args)
        t0 = time.perf_counter()
        ssw_test = evaluate_stand_in(role, tmp, world_dir)
        result["eval_seconds"] = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    record = {
        **key,
        "result": result,
        "ssw_test": ssw_test,
        "threads": threads or before,
        "environment": environment(),
    }
    (tmp / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    _replace_dir(tmp, out)
    return record


def pack_asset(model_dir: str | Path, assets_dir: str | Path = ASSETS_DIR) -> Path:
    """Zip (LZMA, fixed timestamps) a trained stand-in as ``assets_dir/{role}-{key}.zip``."""
    model_dir, assets_dir = Path(model_dir), Path(assets_dir)
    record = read_record(model_dir)
    if record is None:
        raise DataNotFoundError(f"{model_dir} holds no {RECORD}: not a pretrained stand-in")
    assets_dir.mkdir(parents=True, exist_ok=True)
    target = assets_dir / f"{record['role']}-{record['key']}.zip"
    with zipfile.ZipFile(target, "w") as zf:
        for f in sorted(p for p in model_dir.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(
                f.relative_to(model_dir).as_posix(), date_time=(1980, 1, 1, 0, 0, 0)
            )
            zf.writestr(info, f.read_bytes(), compress_type=zipfile.ZIP_LZMA)
    return target


def unpack_asset(asset: str | Path, out_dir: str | Path) -> Path:
    """Extract a `pack_asset` zip into ``out_dir`` (atomically)."""
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(asset) as zf:
        zf.extractall(tmp)
    _replace_dir(tmp, out)
    return out


def _spawn_teacher(world_dir: Path, models_dir: Path, recipe: Recipe, seed: int, threads: int):
    """Train the teacher in a child interpreter (fresh, so no fork of torch's thread pool).

    Returns (Popen, its stderr file): a file, not a pipe, so a chatty child never blocks.
    """
    import tempfile

    import songsight

    env = dict(os.environ)
    src = str(Path(songsight.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    args = [str(world_dir), str(models_dir), "--role", "teacher", "--recipe", recipe.name]
    args += ["--seed", str(seed), "--threads", str(threads)]
    err = tempfile.TemporaryFile()
    cmd = [sys.executable, "-m", "songsight.sim.pretrain", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err), err


def pretrain_stand_ins(
    world_dir: str | Path,
    models_dir: str | Path,
    seed: int = 0,
    quick: bool = False,
    *,
    use_assets: bool = True,
    parallel: bool = True,
) -> dict:
    """Both stand-ins for the world in ``world_dir``, in ``models_dir/{teacher,student}``.

    Each is reused when its ``pretrain.json`` key matches, else unpacked from a shipped asset
    with that key, else trained (`RECIPES` ``"quick"`` or ``"default"``); with ``parallel``,
    teacher and student train at once in two processes. Returns the folders, ``key`` (of
    both), ``recipe``, ``{role}_zero_shot`` / ``{role}_chance`` (held-out pretraining items),
    ``sources`` (cache / asset / trained), ``train_seconds`` (when trained) and ``seconds``.
    """
    t0 = time.perf_counter()
    world_dir, models_dir = (
        Path(world_dir).expanduser().absolute(),
        Path(models_dir).expanduser().absolute(),
    )
    recipe = RECIPES["quick" if quick else "default"]
    keys = {role: stand_in_key(world_dir, role, recipe, seed)["key"] for role in ROLES}
    models_dir.mkdir(parents=True, exist_ok=True)
    sources, todo = {}, []
    for role in ROLES:
        record = read_record(models_dir / role)
        asset = ASSETS_DIR / f"{role}-{keys[role]}.zip"
        if record is not None and record.get("key") == keys[role]:
            sources[role] = "cache"
        elif use_assets and asset.is_file():
            unpack_asset(asset, models_dir / role)
            sources[role] = "asset"
        else:
            todo.append(role)
    if todo:
        threads = max(1, (os.cpu_count() or 2) // 2) if parallel and len(todo) == 2 else None
        child, err = (
            _spawn_teacher(world_dir, models_dir, recipe, seed, threads)
            if threads
            else (None, None)
        )
        try:
            for role in todo:
                if role != "teacher" or child is None:
                    train_stand_in(world_dir, models_dir, role, recipe, seed, threads)
                sources[role] = "trained"
            if child is not None and child.wait() != 0:
                err.seek(0)
                tail = err.read().decode(errors="replace")[-2000:]
                raise SongsightError(
                    f"training the teacher stand-in failed (exit {child.returncode}):\n{tail}"
                )
        finally:
            if child is not None:
                if child.poll() is None:
                    child.kill()
                    child.wait()
                err.close()
    out = {
        "teacher": models_dir / "teacher",
        "student": models_dir / "student",
        "key": stable_hash(keys),
        "recipe": recipe.name,
        "sources": sources,
        "train_seconds": {},
    }
    for role in ROLES:
        record = read_record(models_dir / role)
        if record is None or record.get("key") != keys[role]:
            raise SongsightError(
                f"{models_dir / role}: the stand-in's {RECORD} does not match this world and recipe"
            )
        out[f"{role}_zero_shot"] = record["result"]["zero_shot_acc"]
        out[f"{role}_chance"] = record["result"]["chance"]
        out["train_seconds"][role] = record["result"]["seconds"]
        out[f"{role}_ssw_test"] = (record.get("ssw_test") or {}).get("zero_shot_acc")
    out["seconds"] = time.perf_counter() - t0
    return out


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m songsight.sim.pretrain",
        description="Train one stand-in (used by pretrain_stand_ins).",
    )
    parser.add_argument("world_dir")
    parser.add_argument("models_dir")
    parser.add_argument("--role", choices=ROLES, required=True)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    record = train_stand_in(
        args.world_dir, args.models_dir, args.role, RECIPES[args.recipe], args.seed, args.threads
    )
    print(json.dumps(record["result"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
