"""Weight-space interpolation between a run's starting point and its end (WiSE-FT).

Fine-tuning moves the student away from what it knew at step 0: the cascade head's reading of
every species, and the untouched tower's text space that held-out species and soundscapes are
answered in. Wortsman et al. (2022, "Robust fine-tuning of zero-shot models") average the
weights of the zero-shot model and the fine-tuned one, ``(1 - alpha) * start + alpha * end``,
and find points between the two that beat both, in and out of the fine-tuning distribution.
The trainer scores each ``alpha`` of `INTERPOLATION_WEIGHTS` on the validation split after the
last step, as it scores every checkpoint, and keeps one only where it beats the best so far:
validation never gets worse for it. Only the weights that learn move (the frozen ones, and
BatchNorm's frozen statistics, are the same at both ends), so the starting point kept is
their copy alone: the size of what trains, saved once beside the run to survive a resume.
"""

from __future__ import annotations

from pathlib import Path

# Fractions of the way from the starting point to the last weights tried on validation (the
# two ends are validated by the run itself: step 0 and the last epoch).
INTERPOLATION_WEIGHTS = (0.25, 0.5, 0.75)
START_FILE = "start_weights.pt"


def learning_weights(module) -> dict:
    """{name: CPU copy} of ``module``'s parameters that learn (``requires_grad``)."""
    return {
        name: p.detach().to("cpu", copy=True)
        for name, p in module.named_parameters()
        if p.requires_grad
    }


def blend(module, start: dict, end: dict, alpha: float) -> None:
    """Set ``module``'s learning weights to ``(1 - alpha) * start + alpha * end`` in place
    (``alpha`` 1 restores ``end`` exactly, 0 ``start``)."""
    import torch

    if set(start) != set(end):
        raise ValueError("the two ends of an interpolation hold different weights")
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, a in start.items():
            b = end[name]
            value = b if alpha == 1.0 else a if alpha == 0.0 else torch.lerp(a, b, alpha)
            params[name].copy_(value.to(params[name].device))


def save_start(out: Path, weights: dict) -> None:
    """Keep the starting point's learning weights in ``out`` for `load_start` (atomically)."""
    import torch

    from songsight.outputs import replace_atomically

    with replace_atomically(Path(out) / START_FILE) as tmp:
        torch.save(weights, tmp)


def load_start(out: Path) -> dict | None:
    """The starting weights `save_start` kept in ``out``, or None when there are none."""
    import torch

    path = Path(out) / START_FILE
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
