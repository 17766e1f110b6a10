"""What the simulated world's stand-in models are: their shapes, training recipes, data split.

Shared by `songsight.sim.teacher` and `songsight.sim.student` (the training loops) and
`songsight.sim.pretrain` (cache keys, assets, both models at once). The shapes and schedules
were chosen by ``scripts/pretrain_stand_ins.py`` on the default world (seed 0); its docstring
keeps the sweeps.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from songsight.errors import DataNotFoundError
from songsight.sim.tiny_models import TinyClapSpec, TinyClipSpec
from songsight.taxonomy import load_species_csv

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


def species_of(pretrain_dir: Path, labels: np.ndarray):
    species = load_species_csv(pretrain_dir.parent / "taxa.csv")
    if [s.label for s in species] != list(range(len(species))) or labels.max() >= len(species):
        raise DataNotFoundError(
            f"{pretrain_dir.parent / 'taxa.csv'}: labels must run 0..K-1 and cover the pretraining sets"
        )
    return species


def warmup_cosine(opt, total: int):
    """Linear warmup over a tenth of the steps, then cosine to zero (distillation's schedule)."""
    import torch

    from songsight.distill.setup import warmup_cosine as schedule

    return torch.optim.lr_scheduler.LambdaLR(opt, schedule(max(1, total // 10), total))


def optimizer_step(opt, sched, loss) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()


def zero_shot_accuracy(emb: np.ndarray, class_emb: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 of the nearest class embedding (`songsight.eval.metrics.topk_accuracy`)."""
    from songsight.eval.metrics import topk_accuracy

    return topk_accuracy(emb @ class_emb.T, np.asarray(labels, np.int64), 1)
