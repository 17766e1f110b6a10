"""Calibrated species scores: the roll-up temperature fitted on labelled validation recordings.

``songsight index calibrate --gallery G [--model M] --recordings val.csv`` searches the gallery
with each validation recording (its whole-file answer), finds the temperature that minimises
the negative log-likelihood of the true species (`songsight.retrieval.rollup.fit_temperature`) and
records it in ``gallery.json`` under ``calibration``, keyed by what answers (`model_key`: the
model's weights and settings and the roll-up's ``k``). A `songsight.retrieval.searcher.Searcher` built
later with the same model finds it there and uses it; without one it uses the documented
default (`songsight.retrieval.rollup.ROLLUP_TEMPERATURE`) and says so in its provenance.

A temperature is fitted per model *and method*: a distilled checkpoint calibrated with its
default method (``fused``, say) is not calibrated for ``--method distilled``. A searcher that
finds no calibration of its own where the gallery holds others says so once (`calibration_note`:
a warning, and ``rollup.note`` in its provenance) with the way to calibrate what it answers
with (`calibrate_hint`): ``songsight index calibrate --model M --method X`` (the method
defaults to the checkpoint's own, as for a search).

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
from songsight.gallery import calibrations, record_calibration, recorded_calibration

__all__ = [
    "CalibrationReport",
    "calibrate",
    "calibrate_hint",
    "calibration_note",
    "model_key",
    "recorded_calibration",
    "rollup_calibration",
]

MIN_QUERIES = 5  # fewer labelled recordings than this cannot choose a temperature


def model_key(searcher) -> str:
    """What a temperature is fitted for: the answering model's weights and settings and the
    roll-up's ``k`` (not its path, so a moved checkpoint keeps its calibration)."""
    from songsight.provenance import stable_hash

    prov = searcher.encoder.provenance()
    ident = {k: v for k, v in prov.items() if k not in ("model_id", "source", "precision")}
    return stable_hash(
        {
            "answered_by": searcher.answered_by,
            "model": ident,
            # fused_as_cascade only says why a fused readout runs as the cascade: the same
            # answers, so the same calibration.
            "query": {
                k: v
                for k, v in searcher._query.info.items()
                if k not in ("n_species", "fused_as_cascade")
            },
            "rollup_k": searcher.rollup_k,
        }
    )


def calibrate_hint(
    gallery_dir: str | Path,
    model: str | Path | None,
    method: str | None,
    default_method: str | None,
    audio_model: str | Path | None = None,
    cascade_mode: str = "top1",
) -> str:
    """How to calibrate a search with ``model`` (None: the cascade) answering by ``method``
    (``--method`` only when it is not the checkpoint's ``default_method``)."""
    audio = f" --audio-model {audio_model}" if audio_model is not None else ""
    chosen = f" --model {model}" if model is not None else ""
    if model is not None and method is not None and method != default_method:
        chosen += f" --method {method}"
    mode = " --cascade weighted" if model is None and cascade_mode == "weighted" else ""
    return (
        f"run `songsight index calibrate --gallery {gallery_dir} --recordings VAL.csv"
        f"{chosen}{audio}{mode}` (VAL.csv: labelled validation recordings)"
    )


def calibration_note(
    gallery_provenance: dict,
    key: str,
    answered_by: str,
    model_provenance: dict,
    hint: str,
) -> str | None:
    """What to tell a search that finds no calibration under ``key`` while the gallery holds
    calibrations for other methods or models; None when it has its own, or there are none.

    ``model_provenance``: the answering encoder's provenance; a calibration is "this model"'s
    when its recorded revision (or, for calibrations recorded before revisions were, its model
    id) is this encoder's. ``hint``: `calibrate_hint`.
    """
    recorded = calibrations(gallery_provenance)
    others = [entry for k, entry in recorded.items() if k != key and isinstance(entry, dict)]
    if key in recorded or not others:
        return None

    def same_model(entry: dict) -> bool:
        if entry.get("revision") and model_provenance.get("revision"):
            return entry["revision"] == model_provenance["revision"]
        return entry.get("model_id") == model_provenance.get("model_id")

    described = []
    for entry in others:
        what = str(entry.get("answered_by") or "an unnamed method")
        if not same_model(entry):
            what += f" with {entry.get('model_id')}"
        elif entry.get("answered_by") == answered_by:
            what += f" with other settings (roll-up k {entry.get('rollup_k')}, prompts ...)"
        described.append(what)
    mine = answered_by
    if not all(same_model(e) for e in others):
        mine += f" with {model_provenance.get('model_id')}"
    from songsight.retrieval.rollup import ROLLUP_TEMPERATURE

    return (
        f"species scores use the default roll-up temperature {ROLLUP_TEMPERATURE:g}, not a "
        f"calibrated one: the gallery is calibrated for {'; '.join(sorted(set(described)))}, "
        f"not for {mine}. To calibrate this search, {hint}"
    )


def _rollup_source(temperature_given: bool, calibration: dict | None) -> dict:
    """Where the roll-up temperature came from, for the searcher's provenance."""
    if temperature_given:
        return {"temperature_source": "given"}
    if calibration is not None:
        return {
            "temperature_source": "calibrated",
            "calibration": {
                k: calibration.get(k) for k in ("n_queries", "nll", "split", "fitted_utc")
            },
        }
    return {"temperature_source": "default (not calibrated on validation data)"}


def rollup_calibration(
    searcher, temperature_given: bool, model=None, audio_model=None, cascade_mode: str = "top1"
) -> tuple[float | None, dict]:
    """The temperature the gallery records for ``searcher`` (None: none, or one was given) and
    what its provenance says of where its temperature came from.

    Without one of its own where the gallery holds calibrations for other methods or models,
    it says so once: a warning, and ``note`` in the provenance (`calibration_note`, with
    `calibrate_hint` built from the searcher's ``model``, ``audio_model`` and ``cascade_mode``).
    """
    key = model_key(searcher)
    calibration = recorded_calibration(searcher.gallery.provenance, key)
    source = _rollup_source(temperature_given, calibration)
    if temperature_given:
        return None, source
    query = searcher._query
    hint = calibrate_hint(
        searcher.gallery.directory, model, query.method, query.default_method, audio_model,
        cascade_mode,
    )  # fmt: skip
    note = calibration_note(
        searcher.gallery.provenance, key, searcher.answered_by, searcher.encoder.provenance(), hint
    )
    if note is not None:
        import warnings

        source["note"] = note
        warnings.warn(note, stacklevel=3)
    return (None if calibration is None else float(calibration["temperature"])), source


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
