"""Pretrain the simulated world's tiny stand-ins for BioCLIP-2 (teacher) and BioLingual (student).

* `pretrain_teacher` (`songsight.sim.teacher`): an open_clip CLIP (tiny ViT + CLIP text transformer) trained
  contrastively on ``pretrain/photos.csv`` (TreeOfLife-like captions), saved in open_clip's
  layout (loadable by `BioCLIPEncoder`).
* `pretrain_student` (`songsight.sim.student`): a transformers ``ClapModel`` (tiny unfused HTSAT + RoBERTa) with a BPE
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

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from songsight.errors import DataNotFoundError, SongsightError
from songsight.provenance import environment, stable_hash
from songsight.sim.recipes import (
    RECIPES,
    STUDENT_PROMPTS,
    STUDENT_SPEC,
    TEACHER_PROMPTS,
    TEACHER_SPEC,
    VAL_FRACTION,
    Recipe,
    holdout_mask,
    read_pairs,
    zero_shot_accuracy,
)
from songsight.sim.student import call_windows, pretrain_student
from songsight.sim.teacher import pretrain_teacher

__all__ = [
    "ASSETS_DIR", "FORMAT", "RECIPES", "ROLES", "STUDENT_PROMPTS", "STUDENT_SPEC", "TEACHER_PROMPTS",
    "TEACHER_SPEC", "VAL_FRACTION", "Recipe", "call_windows", "evaluate_stand_in", "holdout_mask",
    "pack_asset", "pretrain_stand_ins", "pretrain_student", "pretrain_teacher", "read_pairs",
    "read_record", "stand_in_key", "train_stand_in", "unpack_asset",
]  # fmt: skip

# Part of every cache key: bump it when a change to the training code changes the models.
FORMAT = "songsight.sim.pretrain/1"
RECORD = "pretrain.json"
ASSETS_DIR = Path(__file__).parent / "assets"
ROLES = ("teacher", "student")


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
    from songsight.encoders.prompts import embed_species_text

    try:
        ds = SSW60(world_dir, warn_missing=False)
        table = ds.images("all", "test") if role == "teacher" else ds.audio("test")
    except DataNotFoundError:
        return None
    table = table.groupby(["label", "source"], sort=False).head(per_species)
    paths, labels = table["path"].tolist(), table["label"].to_numpy()
    from songsight.encoders.runtime import open_torch_encoder

    if role == "teacher":
        enc = open_torch_encoder(model_dir, "image", device="cpu")
        emb, cls = enc.embed_images(paths), enc.embed_species(ds.species, *TEACHER_PROMPTS)
    else:
        enc = open_torch_encoder(model_dir, "audio", device="cpu")
        emb, cls = enc.embed_audio(paths), embed_species_text(enc, ds.species, *STUDENT_PROMPTS)
    return {
        "zero_shot_acc": zero_shot_accuracy(emb, cls, labels),
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
