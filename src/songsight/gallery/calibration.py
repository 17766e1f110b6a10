"""The calibration data a gallery keeps: roll-up temperatures fitted for what searches it.

``gallery.json`` holds, under ``calibration``, one record per answering model and method
(keyed by `songsight.retrieval.calibration.model_key`): the fitted temperature and how it was
fitted. Fitting it is `songsight.retrieval.calibrate.calibrate` (it runs searches); reading
and writing the records is here.
"""

from __future__ import annotations

from pathlib import Path

from songsight.gallery.format import read_meta, utc_now, write_meta

__all__ = ["CALIBRATION_KEY", "calibrations", "record_calibration", "recorded_calibration"]

CALIBRATION_KEY = "calibration"


def calibrations(gallery_provenance: dict) -> dict[str, dict]:
    """key -> record: every calibration a gallery's ``gallery.json`` (as a dict) holds."""
    return gallery_provenance.get(CALIBRATION_KEY) or {}


def recorded_calibration(gallery_provenance: dict, key: str) -> dict | None:
    """The calibration ``gallery.json`` holds for ``key``, or None."""
    return calibrations(gallery_provenance).get(key)


def record_calibration(directory: str | Path, key: str, record: dict) -> None:
    """Write ``record`` as the gallery's calibration for ``key`` (``fitted_utc``: now),
    replacing an earlier one; ``gallery.json`` is replaced atomically."""
    meta = read_meta(Path(directory))
    meta.setdefault(CALIBRATION_KEY, {})[key] = {**record, "fitted_utc": utc_now()}
    write_meta(Path(directory), meta)
