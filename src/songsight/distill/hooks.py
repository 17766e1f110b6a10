"""Callbacks into a distillation run, for tools that watch it (the speed benchmark, a dashboard).

Subclass `DistillHooks`, override what you need, and pass an instance to
`songsight.distill.train.distill(..., hooks=...)`. Every method is a no-op here; none may change
the run (the trainer ignores return values, and the objects passed are the trainer's own: read,
do not modify). Hooks run on every DDP rank; checkpoints are written, and so reported, by rank 0
only. Times are ``time.perf_counter`` seconds, taken around the work itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

# The set-up phases `DistillHooks.on_phase` reports, in the order they run.
SETUP_PHASES = ("teacher_load", "teacher_targets", "student_load", "decode")


class DistillHooks:
    """The callback interface of a distillation run (no-ops; override what you need)."""

    def on_phase(self, name: str, seconds: float) -> None:
        """A set-up phase of `SETUP_PHASES` ended: ``teacher_load`` (BioCLIP-2 built),
        ``teacher_targets`` (species text targets computed or read from the cache),
        ``student_load`` (BioLingual built), ``decode`` (every training clip decoded into the
        in-memory cache; absent when the audio is decoded as it is used)."""

    def on_loop_start(self, step: int) -> None:
        """The loop is about to run its first micro-batch (``step``: 0, or where it resumes)."""

    def on_step(self, step: int, epoch: int, row: dict) -> None:
        """An optimiser step ended and its metrics row was written; ``row`` is that row (loss
        components, ``lr``, ``items_per_s``). Called after the loss has reached the host, so the
        interval between two calls is one whole step."""

    def on_validate(self, epoch: int, step: int, figures: dict) -> None:
        """The validation split was scored (``epoch`` -1: the starting point, before training)."""

    def on_checkpoint(self, name: str, epoch: int, step: int, seconds: float) -> None:
        """Checkpoint ``name`` (``best`` or ``last``) was written, taking ``seconds``."""

    def on_epoch_end(self, epoch: int, step: int) -> None:
        """An epoch ended: validated when due, its checkpoints written."""


@contextmanager
def timed_phase(hooks: DistillHooks, name: str) -> Iterator[None]:
    """Report the wall time of the block as set-up phase ``name``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        hooks.on_phase(name, time.perf_counter() - t0)
