"""``songsight index calibrate``: the roll-up temperature fitted on labelled validation recordings.

``songsight index calibrate --gallery G [--model M] --recordings val.csv`` searches the gallery
with each validation recording (its whole-file answer), finds the temperature that minimises
the negative log-likelihood of the true species (`songsight.retrieval.rollup.fit_temperature`)
and records it in the gallery, keyed by `songsight.retrieval.calibration.model_key`, where a
search reads it (`songsight.retrieval.calibration`).

The recordings manifest has ``path`` and the species, as an integer ``label`` (the gallery's
labels) or a name (``label``, ``species`` or ``common_name``); rows of ``split == val`` are used
when there is a split column (``split=None`` uses every row). Recordings whose species is not in
the gallery cannot be scored and are counted, not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from songsight.errors import DataNotFoundError, SongsightError
from songsight.gallery import record_calibration
from songsight.retrieval.calibration import model_key

__all__ = ["CalibrationReport", "MIN_QUERIES", "calibrate"]

MIN_QUERIES = 5  # fewer labelled recordings than this cannot choose a temperature


@dataclass
class CalibrationReport:
    """A fitted temperature and how much it helped on the validation recordings."""

    temperature: float
    default_temperature: float
    nll: float
    nll_default: float
    top1_accuracy: float
    n_queries: int
    n_skipped: int
    answered_by: str

    def summary(self) -> str:
        return (
            f"roll-up temperature {self.temperature:.4g} for {self.answered_by} (default "
            f"{self.default_temperature:g}): NLL {self.nll_default:.3f} -> {self.nll:.3f} on "
            f"{self.n_queries} validation recordings (top-1 species {self.top1_accuracy:.1%}"
            + (f"; {self.n_skipped} skipped" if self.n_skipped else "")
            + "); recorded in the gallery"
        )


def _true_species(manifest, split: str | None, searcher):
    """(paths, species codes) of the manifest's recordings whose species the gallery holds."""
    from songsight.data.manifest import name_key, normalise_columns, read_table, resolve_paths
    from songsight.retrieval.species_filter import name_lookup

    path = Path(manifest).expanduser()
    df, _ = normalise_columns(
        read_table(path),
        str(path),
        ("path", "label", "species", "scientific_name", "common_name", "species_code", "split"),
    )
    if "path" not in df.columns:
        raise DataNotFoundError(f"{path}: a recordings manifest needs a 'path' column")
    if split and "split" in df.columns:
        if not (df["split"] == split).any():
            raise DataNotFoundError(f"{path}: no rows with split == {split!r}")
        df = df[df["split"] == split].reset_index(drop=True)
    codes, names = searcher._taxa.ranks["species"]
    code_of_name = name_lookup(searcher.gallery.metadata, codes, names)
    code_of_label = {label: code_of_name[name_key(n)] for n, label in searcher._taxa.label.items()}
    columns = [c for c in ("label", "species", "scientific_name", "common_name") if c in df]
    if not columns:
        raise DataNotFoundError(
            f"{path}: no species column (label, species or common_name) to calibrate against"
        )
    paths = resolve_paths(df, path.absolute().parent, str(path))
    out_paths, out_codes, skipped = [], [], 0
    for i, rec in enumerate(df[columns].to_dict("records")):
        code = None
        for value in rec.values():
            text = str(value).strip()
            if not text or text.lower() == "nan":
                continue
            try:
                code = code_of_label.get(int(float(text)))
            except ValueError:
                code = code_of_name.get(name_key(text))
            if code is not None:
                break
        if code is None:
            skipped += 1
        else:
            out_paths.append(Path(paths[i]))
            out_codes.append(code)
    return out_paths, np.asarray(out_codes, np.int64), skipped


def calibrate(
    gallery,
    recordings_manifest: str | Path,
    model: str | Path | None = None,
    *,
    split: str | None = "val",
    progress: bool = True,
    **searcher_options,
) -> CalibrationReport:
    """Fit the roll-up temperature of ``model`` (or the cascade) on ``gallery`` and record it.

    ``searcher_options`` go to `songsight.retrieval.searcher.Searcher` (audio model, device ...).
    """
    from songsight.gallery import Gallery
    from songsight.outputs import claim

    # The fit is recorded in the gallery: claimed (one writer) before any model loads.
    directory = gallery.directory if isinstance(gallery, Gallery) else Path(gallery)
    with claim(directory, folder=True, what="--gallery"):
        return _calibrate(gallery, recordings_manifest, model, split, progress, searcher_options)


def _calibrate(gallery, recordings_manifest, model, split, progress, searcher_options):
    from songsight.retrieval.rollup import ROLLUP_TEMPERATURE, fit_temperature, rollup_nll
    from songsight.retrieval.searcher import Searcher

    searcher = Searcher(gallery, model, rollup_temperature=ROLLUP_TEMPERATURE, **searcher_options)
    codes, names = searcher._taxa.ranks["species"]
    if not names:
        raise SongsightError("the gallery has no species names, so there is nothing to calibrate")
    paths, true, skipped = _true_species(recordings_manifest, split, searcher)
    scores, groups, keep = [], [], []
    for i, clip_scores, clip_ids in searcher.clip_answers(paths, progress=progress):
        if clip_scores is None:
            skipped += 1
            continue
        scores.append(clip_scores)
        groups.append(np.where(clip_ids >= 0, codes[np.maximum(clip_ids, 0)], -1))
        keep.append(i)
    if len(keep) < MIN_QUERIES:
        raise DataNotFoundError(
            f"{recordings_manifest}: {len(keep)} usable recordings of the gallery's species "
            f"({skipped} skipped); at least {MIN_QUERIES} are needed to choose a temperature"
        )
    s, g, t = np.stack(scores), np.stack(groups), true[keep]
    temperature = fit_temperature(s, g, t)
    from songsight.retrieval.rollup import softmax_rollup

    top1 = np.mean(
        [
            int(np.argmax(softmax_rollup(s[q], g[q], len(names), temperature))) == t[q]
            for q in range(len(t))
        ]
    )
    report = CalibrationReport(
        temperature, ROLLUP_TEMPERATURE, rollup_nll(s, g, t, temperature),
        rollup_nll(s, g, t, ROLLUP_TEMPERATURE), float(top1), len(t), skipped,
        searcher.answered_by,
    )  # fmt: skip
    record_calibration(searcher.gallery.directory, model_key(searcher), {
        "temperature": temperature,
        "method": "NLL of the true species on labelled validation recordings",
        "nll": report.nll,
        "nll_default": report.nll_default,
        "top1_accuracy": report.top1_accuracy,
        "n_queries": report.n_queries,
        "n_skipped": skipped,
        "recordings": str(Path(recordings_manifest).absolute()),
        "split": split,
        "answered_by": searcher.answered_by,
        "model_id": searcher.encoder.provenance().get("model_id"),
        "revision": searcher.encoder.provenance().get("revision"),
        "rollup_k": searcher.rollup_k,
    })  # fmt: skip
    return report
