"""Calibrated species scores, as a search reads them: the roll-up temperature a gallery records.

``songsight index calibrate`` (`songsight.retrieval.calibrate`) fits a temperature on labelled
validation recordings and records it in ``gallery.json`` under ``calibration``, keyed by what
answers (`model_key`: the model's weights and settings and the roll-up's ``k``). A
`songsight.retrieval.searcher.Searcher` built later with the same model finds it there
(`rollup_calibration`) and uses it; without one it uses the documented default
(`songsight.retrieval.rollup.ROLLUP_TEMPERATURE`) and says so in its provenance.

A temperature is fitted per model *and method*: a distilled checkpoint calibrated with its
default method (``fused``, say) is not calibrated for ``--method distilled``. A searcher that
finds no calibration of its own where the gallery holds others says so once (`calibration_note`:
a warning, and ``rollup.note`` in its provenance) with the way to calibrate what it answers
with (`calibrate_hint`): ``songsight index calibrate --model M --method X`` (the method
defaults to the checkpoint's own, as for a search).
"""

from __future__ import annotations

from pathlib import Path

from songsight.gallery import calibrations, recorded_calibration

__all__ = [
    "calibrate_hint",
    "calibration_note",
    "model_key",
    "recorded_calibration",
    "rollup_calibration",
]


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
