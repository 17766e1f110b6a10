"""Find the stand-ins' pretraining recipe, and write the pretrained stand-ins shipped as assets.

    python scripts/pretrain_stand_ins.py assets [--work DIR] [--only quick]   # ~10 min on 2 cores
    python scripts/pretrain_stand_ins.py sweep WORLD_DIR [--only NAME ...]

``assets`` exports the default world and the quick world (seed 0), trains both stand-ins of
each with `songsight.sim.pretrain.pretrain_stand_ins` (recipe ``default`` resp. ``quick``),
and replaces ``src/songsight/sim/assets/*.zip`` with ``{role}-{key}.zip`` plus
``index.json``. The key covers the world's config, a fingerprint of its pretraining data,
the recipe and the seed: rerun this after any change to how the world renders or to the
recipes, or the demo will (correctly, but slowly) pretrain at run time.

``sweep`` retrains recipe variants (`VARIANTS`) on an exported world and prints one Markdown
row per variant: held-out zero-shot accuracy, accuracy on the training items, and time.

What the sweeps showed (default world: 60 species, 2,880 training / 720 held-out items per
modality, chance 1.7%; one torch thread, CPU seconds on a loaded machine):

Student (tiny HTSAT + RoBERTa, 16 kHz). Trained end to end it stays near chance, so stage 1
trains the audio tower with a species head, stage 2 aligns projections and text tower.
  - 5 s windows, 16 mels, spec 64 (256 frames), 2+2 blocks of 32/64: 70 ms per batch of 24,
    3.5x the cost of spec 32 (64 frames) for the same parameters; spec 32 kept.
  - spec 32, 5 s (hop 1270): 600 x 24 steps -> 20% zero-shot; 2000 x 32 -> 34%;
    lr 1e-2 diverges (4%); 1000 x 64 at 5e-3 with 1500 align steps -> 57%;
    hidden 48 -> 17%; dropout 0 -> 60%; grad clip 1 -> 58%; 3 s windows -> 62%;
    8 mels x 127 frames -> 62%.
  - 4 s windows, hop 1024, n_fft 2048, dropout 0: 1500 x 64 -> 67% (stage 1 ~70 s CPU);
    2500 x 64 -> 71% (~118 s). Chosen: 1500 x 64, then 1000 align steps at 3e-3.
  Logistic regression on window mean / std / p90 log-mel reaches 40% on the same split, so
  the world's calls are hard (SNR down to -5 dB, distractors) and the HTSAT learns more.
Teacher (tiny ViT + CLIP text transformer, CLIP InfoNCE with same-species positives).
  - 32 px / patch 8: 500 x 64 -> 27%; 1500 x 64 -> 45% (99% on training photos: overfits).
  - 64 px / patch 16 -> 39%; 64 px / patch 8 -> 75% (1500 steps, ~2x the cost).
  - flip + 4 px shift augmentation: 32/8 -> 71%; 64/8 (8 px, 800 steps) -> 79%;
    32/4 -> 94% at 1500 x 64, 79% at 800 x 64.
  - 32/4, context 48 (captions <= 36 tokens): 1200 x 64 at 2e-3 -> 91% (~119 s CPU);
    1200 x 48 at 3e-3 -> 88%. Chosen: 1200 x 64.
The quick recipe (300 steps; 300 + 300 for the student; batch 32) on a 12-species world with
30 items per species: teacher 86%, student 43% (chance 8%), about 20 s CPU each.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from songsight.sim.export import export_world
from songsight.sim.pretrain import (
    ASSETS_DIR,
    RECIPES,
    ROLES,
    STUDENT_SPEC,
    TEACHER_SPEC,
    pack_asset,
    pretrain_stand_ins,
    pretrain_student,
    pretrain_teacher,
    read_record,
)
from songsight.sim.world import WorldConfig, build_world

WORLDS = {"default": (WorldConfig(seed=0), False), "quick": (WorldConfig.quick(seed=0), True)}

# name -> (role, recipe overrides, spec overrides), each against RECIPES["default"].
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "student chosen": ("student", {}, {}),
    "student 2500 audio steps": ("student", {"student_steps": (2500, 1000)}, {}),
    "student 5 s windows": ("student", {}, {"window_s": 5, "hop_length": 1270}),
    "student spec 64": ("student", {}, {"spec_size": 64, "hop_length": 256, "n_fft": 512}),
    "student dropout 0.1": ("student", {}, {"dropout": 0.1}),
    "student lr 1e-2": ("student", {"student_lr": (1e-2, 3e-3)}, {}),
    "teacher chosen": ("teacher", {}, {}),
    "teacher patch 8": ("teacher", {}, {"patch_size": 8}),
    "teacher 64 px patch 8": ("teacher", {}, {"image_size": 64, "patch_size": 8}),
    "teacher 800 steps": ("teacher", {"teacher_steps": 800}, {}),
}


def make_assets(work: Path, names: list[str]) -> list[dict]:
    """Export each named world of `WORLDS`, train its stand-ins, pack them; returns the index rows.

    Assets of worlds not named stay as they are, with their rows in ``index.json``.
    """
    index_file = ASSETS_DIR / "index.json"
    kept = []
    if index_file.is_file():
        kept = [r for r in json.loads(index_file.read_text())["assets"] if r["world"] not in names]
    trained = []
    for name in names:
        cfg, quick = WORLDS[name]
        world_dir, models_dir = work / name / "world", work / name / "models"
        t0 = time.perf_counter()
        export_world(build_world(cfg), world_dir, workers=2, overwrite=True)
        print(f"{name} world exported in {time.perf_counter() - t0:.0f} s", flush=True)
        result = pretrain_stand_ins(world_dir, models_dir, seed=0, quick=quick, use_assets=False)
        trained.append((name, models_dir, result))
    keep_files = {r["file"] for r in kept}
    for old in ASSETS_DIR.glob("*.zip"):
        if old.name not in keep_files:
            old.unlink()
    rows = list(kept)
    for name, models_dir, result in trained:
        for role in ROLES:
            record = read_record(models_dir / role)
            asset = pack_asset(models_dir / role, ASSETS_DIR)
            res = record["result"]
            rows.append(
                {
                    "file": asset.name, "bytes": asset.stat().st_size, "world": name, "role": role,
                    "key": record["key"], "recipe": record["recipe"], "seed": record["seed"],
                    "world_config": record["world_config"], "data_fingerprint": record["data_fingerprint"],
                    "zero_shot_acc": res["zero_shot_acc"], "train_zero_shot_acc": res["train_zero_shot_acc"],
                    "chance": res["chance"], "seconds": res["seconds"], "cpu_seconds": res["cpu_seconds"],
                    "ssw_test_zero_shot_acc": (record["ssw_test"] or {}).get("zero_shot_acc"),
                    "ssw_test_n": (record["ssw_test"] or {}).get("n"),
                }
            )  # fmt: skip
        print(
            f"{name}: {json.dumps({k: v for k, v in result.items() if k not in ('teacher', 'student')}, default=str)}"
        )
    rows.sort(key=lambda r: (r["world"], r["role"]))
    index = {"format": "songsight.sim.assets/1", "assets": rows}
    index_file.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return [r for r in rows if r["world"] in names]


def sweep(world_dir: Path, names: list[str], seed: int = 0) -> None:
    """Train each named variant on ``world_dir`` and print a Markdown table row per variant."""
    print("| variant | held-out zero-shot | training items | chance | seconds | CPU seconds |")
    print("|---|---|---|---|---|---|")
    base = RECIPES["default"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            role, over, spec_over = VARIANTS[name]
            recipe = replace(base, **over)
            if role == "teacher":
                spec = replace(TEACHER_SPEC, **spec_over)
                r = pretrain_teacher(
                    world_dir / "pretrain",
                    Path(tmp) / name,
                    spec,
                    recipe.teacher_steps,
                    recipe.teacher_lr,
                    recipe.teacher_batch,
                    seed,
                )
            else:
                spec = replace(STUDENT_SPEC, **spec_over)
                r = pretrain_student(
                    world_dir / "pretrain",
                    Path(tmp) / name,
                    spec,
                    recipe.student_steps,
                    recipe.student_lr,
                    recipe.student_batch,
                    seed,
                )
            shutil.rmtree(Path(tmp) / name, ignore_errors=True)
            print(
                f"| {name} | {r['zero_shot_acc']:.1%} | {r['train_zero_shot_acc']:.1%} | {r['chance']:.1%} "
                f"| {r['seconds']:.0f} | {r['cpu_seconds']:.0f} |",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser(
        "assets", help="export the default and quick worlds, train, pack into sim/assets"
    )
    a.add_argument(
        "--work", default=None, help="keep the worlds and models here (default: a temporary folder)"
    )
    a.add_argument(
        "--only",
        nargs="+",
        choices=sorted(WORLDS),
        default=sorted(WORLDS),
        help="retrain these worlds' stand-ins; the others' assets are kept",
    )
    s = sub.add_parser("sweep", help="retrain recipe variants on an exported world")
    s.add_argument("world_dir", type=Path)
    s.add_argument("--only", nargs="*", choices=sorted(VARIANTS), default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=1, help="torch threads (the sweeps above used 1)")
    args = ap.parse_args(argv)
    if args.cmd == "sweep":
        import torch

        torch.set_num_threads(args.threads)
        sweep(args.world_dir, args.only or list(VARIANTS), args.seed)
        return 0
    if args.work:
        rows = make_assets(Path(args.work), args.only)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = make_assets(Path(tmp), args.only)
    for r in rows:
        ssw = r["ssw_test_zero_shot_acc"]
        print(
            f"{r['file']}: {r['world']} {r['role']}, zero-shot {r['zero_shot_acc']:.1%} held out, "
            f"{ssw if ssw is None else f'{ssw:.1%}'} SSW test (chance {r['chance']:.1%}), "
            f"{r['bytes'] / 1e6:.2f} MB, trained in {r['seconds']:.0f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
