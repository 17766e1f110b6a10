"""What one evaluation scores, wherever it comes from (`EvalData`): the species, the query
recordings, the recordings the probes train on, and the photo gallery.

Two sources make one, and everything after (`songsight.eval.tasks`) is the same for both:

- `ssw60_data`: an extracted SSW60; queries are its test audio, training rows its train
  audio, the gallery its test images (NABirds, iNat or both, as ``source``).
- `manifest_data`: a user's own audio manifest, photo manifest and species table
  (`songsight.data.manifest` format; a label is an integer or a species name or code of the
  table). In the audio manifest, with a ``split`` column, ``test`` rows are the queries and
  ``train`` rows train the probes (other splits are not used); without one, every row is a
  query and nothing trains the probes (`EvalData.no_train` says why; the tasks skip them with
  a note). The gallery is the photo manifest's ``test`` rows when it has a ``split`` column,
  else every row; a ``source`` column, where given, names parts of the gallery scored
  separately, as SSW60's NABirds and iNat are.

Files listed but absent are dropped with one warning and listed in `EvalData.missing`, as
SSW60 does; a label outside the species table is an error naming its rows.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from songsight.errors import DataNotFoundError
from songsight.taxonomy import Species

TEST, TRAIN = "test", "train"


@dataclass
class EvalData:
    """One evaluation's data; tables are manifests (``path``, ``label`` int, ...), fresh index.

    ``queries``: the recordings that query the gallery (and, unless ``--focal``, are scored
    zero-shot); ``train``: recordings the probes are fitted on and audio template candidates
    are chosen on, None when there are none (``no_train`` says why); ``gallery``: the photos,
    with a ``source`` column where its parts are scored separately. ``source`` describes what
    was read, for RESULTS.json (``kind`` "ssw60" with ``root``, or "manifests" with each file's
    path and sha256); ``missing``: files listed but absent.
    """

    species: list[Species]
    queries: pd.DataFrame
    train: pd.DataFrame | None
    gallery: pd.DataFrame
    source: dict
    missing: list[str] = field(default_factory=list)
    no_train: str | None = None


def load_eval_data(cfg) -> EvalData:
    """The data an `EvalConfig` names: ``ssw60``, or ``audio`` + ``photos`` + ``species``."""
    if cfg.ssw60:
        return ssw60_data(cfg.ssw60, cfg.gallery)
    return manifest_data(cfg.audio, cfg.photos, cfg.species)


def ssw60_data(root: str | Path, gallery: str = "all") -> EvalData:
    """SSW60's test audio (queries), train audio (probes) and test images of ``gallery``
    ("all", "nabirds" or "inat"); warns once about files listed but absent."""
    from songsight.data.ssw60 import SSW60

    data = SSW60(root)
    return EvalData(
        species=data.species,
        queries=data.audio(TEST),
        train=data.audio(TRAIN),
        gallery=data.images(gallery, TEST),
        source={"kind": "ssw60", "root": str(data.root)},
        missing=data.missing,
    )


def manifest_data(audio: str | Path, photos: str | Path, species_table: str | Path) -> EvalData:
    """A user's recordings and photos; see the module docstring for how rows are used."""
    from songsight.data.manifest import check_files
    from songsight.eval.inputs import file_sha256
    from songsight.taxonomy import load_species_csv

    species = load_species_csv(species_table)
    recordings = _read(audio, species)
    pictures = _read(photos, species)
    if "split" in recordings.columns:
        queries = _rows(recordings, TEST, audio, "the queries")
        train = _rows(recordings, TRAIN)
        no_train = f"the audio manifest {audio} has no '{TRAIN}' rows"
    else:
        queries, train = recordings, pd.DataFrame()
        no_train = (
            f"the audio manifest {audio} has no split column, so every recording is a query "
            f"and none is a '{TRAIN}' row"
        )
    gallery = (
        _rows(pictures, TEST, photos, "the gallery") if "split" in pictures.columns else pictures
    )
    missing: dict[str, list[str]] = {}
    queries, missing["queries"] = check_files(queries)
    gallery, missing["photos"] = check_files(gallery)
    if len(train):
        train, missing["train"] = check_files(train)
        no_train = f"none of the '{TRAIN}' recordings of {audio} exists on disk"
    absent = [p for paths in missing.values() for p in paths]
    if absent:
        per = ", ".join(f"{k}: {len(v)}" for k, v in missing.items() if v)
        warnings.warn(
            f"{len(absent)} file(s) listed in the manifests are absent and skipped ({per}; e.g. "
            f"{absent[0]}); all are listed under data.missing in the results",
            stacklevel=3,
        )
    for name, table in (("queries", queries), ("photos", gallery)):
        if not len(table):
            raise DataNotFoundError(f"none of the {name} listed in the manifests exists on disk")

    def described(path) -> dict:
        return {"path": str(Path(path).expanduser().absolute()), "sha256": file_sha256(path)}

    return EvalData(
        species=species,
        queries=queries,
        train=train if len(train) else None,
        gallery=gallery,
        source={
            "kind": "manifests",
            "audio": {**described(audio), "rows": len(recordings)},
            "photos": {**described(photos), "rows": len(pictures)},
            "species_table": {**described(species_table), "species": len(species)},
        },
        missing=absent,
        no_train=None if len(train) else no_train,
    )


def _read(path: str | Path, species: list[Species]) -> pd.DataFrame:
    """A manifest whose every label is one of ``species`` (names resolved through them)."""
    from songsight.data.cells import quote_rows
    from songsight.data.manifest import load_manifest

    df = load_manifest(path, species=species)
    known = np.isin(df["label"].to_numpy(), [s.label for s in species])
    if not known.all():
        raise DataNotFoundError(
            f"{path}: label(s) not in the species table; {quote_rows(df, ~known, 'label')}"
        )
    return df


def _rows(df: pd.DataFrame, split: str, path=None, role: str = "") -> pd.DataFrame:
    """The rows of one split; with ``path``, none is an error saying what they are for."""
    rows = df.loc[df["split"] == split].reset_index(drop=True)
    if path is not None and not len(rows):
        have = ", ".join(sorted({repr(s) for s in df["split"].tolist()}))
        raise DataNotFoundError(
            f"{path}: no rows with split '{split}' (splits: {have}); its '{split}' rows are "
            f"{role}: mark them, or drop the split column to use every row"
        )
    return rows
