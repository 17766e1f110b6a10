"""PNG figures of an evaluation: mAP per method with CI bars, per-species AP bars and a grid
of example queries.

Drawn on matplotlib's Agg canvas through `matplotlib.figure.Figure` directly, never pyplot,
so nothing global (backend, open figures) changes in the caller's process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from songsight.errors import InputFileError

BASELINES = ("cascade_top1", "cascade_weighted", "map_ridge", "map_procrustes", "map_mlp")
SPECTROGRAM_RATE_HZ = 22_050


def _figure(width_in: float, height_in: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")


def featured_methods(retrieval: Mapping) -> list[str]:
    """The best baseline by mAP, the distilled model's readouts and the oracle, where present."""
    a2i = retrieval.get("audio_to_image", {})
    scored = [(a2i[m].get("map") or 0.0, m) for m in BASELINES if m in a2i]
    chosen = [max(scored)[1]] if scored else []
    return chosen + [m for m in ("distilled", "distilled_proto", "fused", "oracle") if m in a2i]


def plot_map_by_method(
    retrieval: Mapping,
    labels: Mapping[str, str],
    path: str | Path,
    title: str = "Audio-to-image mAP per method (95% bootstrap CI)",
) -> Path:
    """Horizontal bars of each method's audio-to-image mAP in ``retrieval``, in its order, with
    the bootstrap interval as error bars where there is one; chance and oracle greyed."""
    a2i = retrieval.get("audio_to_image", {})
    ci = retrieval.get("audio_to_image_ci", {})
    methods = [m for m in a2i if a2i[m].get("map") is not None]
    values = np.array([float(a2i[m]["map"]) for m in methods])
    low, high = [], []
    for m, v in zip(methods, values, strict=True):
        band = ci.get(m, {}).get("map") or {}
        lo, hi = band.get("ci_low"), band.get("ci_high")
        low.append(v - lo if lo is not None else 0.0)
        high.append(hi - v if hi is not None else 0.0)
    fig = _figure(7.0, 1.0 + 0.42 * max(1, len(methods)))
    ax = fig.add_subplot()
    ys = np.arange(len(methods))
    colours = ["#9e9e9e" if m in ("chance", "oracle") else "#2b6cb0" for m in methods]
    ax.barh(ys, values, xerr=np.array([low, high]), color=colours, capsize=3, ecolor="#222")
    for y, v in zip(ys, values, strict=True):
        ax.text(min(v + 0.01, 0.92), y, f"{100 * v:.1f}", va="center", fontsize=8)
    ax.set_yticks(ys, [labels.get(m, m) for m in methods], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("mean average precision")
    ax.set_title(title, fontsize=10)
    path = Path(path)
    fig.savefig(path)
    return path


def plot_per_species_ap(
    per_species: Mapping[str, Mapping[str, float | None]],
    names: Mapping[str, str],
    path: str | Path,
    title: str = "Audio-to-image AP per species",
) -> Path:
    """Horizontal grouped bars: one group per species, one bar per method; sorted by the first method."""
    methods = list(per_species)
    species = sorted(
        {k for m in methods for k in per_species[m]},
        key=lambda k: -(per_species[methods[0]].get(k) or 0.0),
    )
    fig = _figure(8.0, 1.2 + 0.28 * len(species) * max(1, len(methods)) ** 0.5)
    ax = fig.add_subplot()
    height = 0.8 / max(1, len(methods))
    ys = np.arange(len(species))
    for i, m in enumerate(methods):
        values = [per_species[m].get(k) or 0.0 for k in species]
        ax.barh(ys + i * height, values, height=height, label=m)
    ax.set_yticks(
        ys + height * (len(methods) - 1) / 2, [names.get(k, k) for k in species], fontsize=7
    )
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("average precision")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    path = Path(path)
    fig.savefig(path)
    return path


def plot_example_queries(
    similarity: np.ndarray,
    queries: pd.DataFrame,
    gallery: pd.DataFrame,
    names: Mapping[str, str],
    path: str | Path,
    *,
    method: str = "",
    n_examples: int = 4,
    k: int = 5,
    seed: int = 0,
) -> Path:
    """Rows of: the query's spectrogram, then its top-``k`` images, correct ones outlined green.

    ``similarity`` (Q, G) scores of ``queries`` (rows with path, label) against ``gallery``.
    Queries are drawn (seeded) from distinct species. Unreadable files show as blank panels.
    """
    from songsight.inputs.audio import load_audio
    from songsight.inputs.images import load_image

    rng = np.random.default_rng(seed)
    q_labels = queries["label"].to_numpy()
    picks = []
    for label in rng.permutation(np.unique(q_labels))[:n_examples]:
        picks.append(int(rng.choice(np.flatnonzero(q_labels == label))))
    k = min(k, similarity.shape[1])
    fig = _figure(2.2 * (k + 1.6), 2.0 * max(1, len(picks)) + 0.4)
    grid = fig.add_gridspec(max(1, len(picks)), k + 1, width_ratios=[2.2] + [1] * k)
    g_labels = gallery["label"].to_numpy()
    for row, qi in enumerate(picks):
        ax = fig.add_subplot(grid[row, 0])
        try:
            audio = load_audio(queries["path"].iloc[qi], SPECTROGRAM_RATE_HZ)
            ax.specgram(
                audio.waveform, NFFT=512, Fs=audio.sample_rate_hz, noverlap=384, cmap="magma"
            )
        except InputFileError:
            pass
        ax.set_title(f"query: {names.get(str(q_labels[qi]), q_labels[qi])}", fontsize=8)
        ax.set_xlabel("s", fontsize=7)
        ax.set_ylabel("Hz", fontsize=7)
        ax.tick_params(labelsize=6)
        top = np.argsort(-similarity[qi], kind="stable")[:k]
        for col, gi in enumerate(top, start=1):
            ax = fig.add_subplot(grid[row, col])
            try:
                img = load_image(gallery["path"].iloc[gi])
                img.thumbnail((160, 160))
                ax.imshow(np.asarray(img))
            except InputFileError:
                pass
            ax.set_xticks([])
            ax.set_yticks([])
            correct = g_labels[gi] == q_labels[qi]
            for spine in ax.spines.values():
                spine.set_edgecolor("#1a9850" if correct else "#d73027")
                spine.set_linewidth(4 if correct else 1.5)
            ax.set_title(f"#{col} {names.get(str(g_labels[gi]), g_labels[gi])}", fontsize=7)
    fig.suptitle(
        f"Example queries ({method}): top-{k} images, correct species outlined green", fontsize=10
    )
    path = Path(path)
    fig.savefig(path)
    return path


def write_figures(
    results: Mapping,
    similarity: Mapping[str, np.ndarray],
    queries: pd.DataFrame,
    gallery: pd.DataFrame,
    folder: str | Path,
    *,
    n_examples: int = 4,
    seed: int = 0,
) -> list[Path]:
    """``map_by_method.png``, ``per_species_ap.png`` and ``example_queries.png`` in ``folder``;
    returns the paths written."""
    from songsight.eval.report import LABELS

    retrieval = results.get("retrieval") or {}
    featured = featured_methods(retrieval)
    if not featured:
        return []
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = {str(s["label"]): s["common_name"] for s in results.get("species", [])}
    per_species = retrieval.get("audio_to_image_per_species", {})
    paths = [
        plot_map_by_method(retrieval, LABELS, folder / "map_by_method.png"),
        plot_per_species_ap(
            {m: per_species[m] for m in featured if m in per_species},
            names,
            folder / "per_species_ap.png",
        ),
    ]
    shown: Sequence[str] = [m for m in featured if m != "oracle"] or featured
    method = "distilled" if "distilled" in shown else shown[0]
    if len(queries) and len(gallery):
        paths.append(
            plot_example_queries(
                similarity[method],
                queries,
                gallery,
                names,
                folder / "example_queries.png",
                method=method,
                n_examples=n_examples,
                seed=seed,
            )
        )
    return paths
