"""The one manifest format for lists of recordings and photos.

A manifest is a table, one row per file (or per annotated segment of a file):

========== ======== =========================================================
column     type     meaning
========== ======== =========================================================
``path``   str      the file; relative paths are resolved against ``root``
                    (default: the manifest's folder)
``label``  int      species label, as in ``taxa.csv`` / `songsight.taxonomy.Species`
``split``  str      optional: ``train`` / ``val`` / ``test`` ...
``start_s`` float   optional: segment start in seconds (soundscape annotations)
``end_s``  float    optional: segment end in seconds, ``> start_s``
(others)   any      kept as they are (``asset_id``, ``source``, photographer ...)
========== ======== =========================================================

Column names are read as people write them: case, spaces and hyphens do not matter
(``Common name`` is ``common_name``) and `COLUMN_ALIASES` are known (``file`` for ``path``,
``latin_name`` for ``scientific_name`` ...); a column one letter or so away from a known name is
an error that names it, never silently ignored. A label is an integer, or, given a species table
(``species=``), a species' scientific name, common name or code; a manifest may also name its
species in a ``species`` / ``common_name`` / ``species_code`` column instead of a label.

Stored as CSV or Parquet, chosen by suffix, and read by `songsight.taxonomy.read_table`, as
species tables are: a CSV may start with a BOM, end its lines either way and be separated by
``,``, ``;`` or tabs (sniffed). CSV manifests are read as text first so that ids
such as ``1e5`` or ``0123`` are never turned into numbers; known columns are then converted, and
extra columns stay text (use Parquet to keep their types). `manifest_sha256` hashes the content
in a type-insensitive canonical form, so a manifest and its CSV or Parquet copy hash the same.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from songsight.data.cells import (
    SHOW,
    canonical,
    float_column,
    is_blank,
    quote_rows,
    to_float_or_nan,
)
from songsight.errors import DataNotFoundError
from songsight.taxonomy import COLUMN_ALIASES as COLUMN_ALIASES
from songsight.taxonomy import column_key as column_key
from songsight.taxonomy import normalise_columns, read_table, table_format

REQUIRED_COLUMNS = ("path", "label")
OPTIONAL_COLUMNS = ("split", "start_s", "end_s")
SOUNDSCAPE_COLUMNS = ("path", "start_s", "end_s", "label")
# Columns that can name a species instead of (or besides) an integer label.
NAME_COLUMNS = ("species", "scientific_name", "common_name", "species_code")


def species_lookup(species) -> dict[str, int]:
    """Scientific name, common name and code of each `Species` (compared as `name_key`) -> label."""
    out: dict[str, int] = {}
    for sp in species:
        for text in (sp.scientific_name, sp.common_name, sp.code):
            if text:
                out.setdefault(name_key(text), int(sp.label))
    return out


def name_key(text: object) -> str:
    """How species names are compared: case and spacing (and ``_``) ignored."""
    return " ".join(str(text).replace("_", " ").split()).casefold()


def _int_labels(df: pd.DataFrame, name: str, species=None) -> np.ndarray:
    """The label column as int64; names are looked up in ``species`` when it is given."""
    cells = df["label"].tolist()
    values = np.array([to_float_or_nan(v) for v in cells], dtype=np.float64)
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any() and species is not None:
        lookup = species_lookup(species)
        for i in np.flatnonzero(bad):
            label = lookup.get(name_key(cells[i])) if isinstance(cells[i], str) else None
            if label is not None:
                values[i], bad[i] = label, False
        if bad.any():
            raise DataNotFoundError(
                f"{name}: column 'label' holds names that are not in the species table "
                f"(nor integer labels); {quote_rows(df, bad, 'label')}"
            )
    if bad.any():
        raise DataNotFoundError(
            f"{name}: column 'label' must hold integer species labels (as in taxa.csv), or "
            f"species names together with a species table; {quote_rows(df, bad, 'label')}"
        )
    return values.astype(np.int64)


def _labels_from_names(df: pd.DataFrame, name: str, species) -> tuple[pd.DataFrame, str]:
    """A label column made from the first name column present (species tables only)."""
    column = next(c for c in NAME_COLUMNS if c in df.columns)
    return df.assign(label=df[column].tolist()), column


def resolve_paths(df: pd.DataFrame, root: Path | None, name: str) -> list[str]:
    """The ``path`` column, relative paths joined to ``root``, each normalised; empty cells refused."""
    raw = df["path"].tolist()
    bad = np.array([is_blank(p) for p in raw], dtype=bool)
    if bad.any():
        raise DataNotFoundError(
            f"{name}: column 'path' has empty cells; {quote_rows(df, bad, 'path')}"
        )
    out = []
    for p in raw:
        q = Path(str(p).strip()).expanduser()
        if root is not None and not q.is_absolute():
            q = root / q
        # "sub/../photos/x.png" is stored as "photos/x.png": one spelling per file.
        out.append(os.path.normpath(q))
    return out


def _validate(
    df: pd.DataFrame,
    *,
    root: Path | None,
    name: str,
    required: Sequence[str],
    interval_required: bool,
    species=None,
) -> pd.DataFrame:
    known = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *NAME_COLUMNS)
    df, _ = normalise_columns(df.copy(), name, known)
    if "label" not in df.columns and species is not None and any(c in df for c in NAME_COLUMNS):
        df, _ = _labels_from_names(df, name, species)
    missing = [c for c in required if c not in df.columns]
    if missing:
        optional = [c for c in OPTIONAL_COLUMNS if c not in required]
        raise DataNotFoundError(
            f"{name}: missing column(s) {', '.join(missing)}; a manifest needs "
            f"{', '.join(required)} (optional: {', '.join(optional)}"
            + ("" if species is None else "; with a species table, a species or common_name column may stand for label")
            + f"); found {', '.join(map(str, df.columns)) or 'no columns'}"
        )  # fmt: skip
    df = df.reset_index(drop=True)
    df["path"] = resolve_paths(df, root, name)
    df["label"] = _int_labels(df, name, species)
    if "split" in df.columns:
        df["split"] = ["" if is_blank(s) else str(s).strip() for s in df["split"].tolist()]
    for column in ("start_s", "end_s"):
        if column in df.columns:
            df[column] = float_column(df, column, name, allow_missing=not interval_required)
    if "start_s" in df.columns:
        bad = (df["start_s"] < 0).to_numpy()
        if bad.any():
            raise DataNotFoundError(f"{name}: negative start_s; {quote_rows(df, bad, 'start_s')}")
    if "start_s" in df.columns and "end_s" in df.columns:
        start, end = df["start_s"].to_numpy(), df["end_s"].to_numpy()
        # NaN compares False, so rows without an interval pass.
        bad = start >= end
        if bad.any():
            rows = np.flatnonzero(bad)
            shown = ", ".join(f"row {i}: {start[i]:g} >= {end[i]:g}" for i in rows[:SHOW])
            raise DataNotFoundError(
                f"{name}: start_s must be < end_s; {shown}"
                + (f" and {len(rows) - SHOW} more" if len(rows) > SHOW else "")
            )
    return df


def _load(
    source: str | Path | pd.DataFrame,
    root: str | Path | None,
    rename: Mapping[str, str] | None,
    required: Sequence[str],
    interval_required: bool,
    species=None,
) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        df, name, default_root = source, "manifest", None
    else:
        path = Path(source).expanduser()
        df, name, default_root = read_table(path), str(path), path.parent
    if rename:
        df = df.rename(columns=dict(rename))
    base = Path(root).expanduser() if root is not None else default_root
    # Absolute so that resolved paths survive a later chdir.
    base = base.absolute() if base is not None else None
    return _validate(
        df, root=base, name=name, required=required, interval_required=interval_required,
        species=species,
    )  # fmt: skip


def load_manifest(
    source: str | Path | pd.DataFrame,
    root: str | Path | None = None,
    *,
    rename: Mapping[str, str] | None = None,
    species=None,
) -> pd.DataFrame:
    """Read and validate a manifest (CSV, Parquet or a DataFrame, which is not modified).

    Returns a new DataFrame with a fresh RangeIndex: ``path`` (str, relative paths joined to
    ``root``, default the manifest file's folder; a DataFrame's relative paths stay as they are
    unless ``root`` is given), ``label`` (int64), ``split`` (str, ``""`` when blank) and
    ``start_s`` / ``end_s`` (float64, NaN when blank) where present, then every other column.
    ``rename`` maps source column names to manifest ones first, e.g. ``{"filepath": "path"}``.
    ``species``: the species table (`songsight.taxonomy.Species` list); with it a label may
    be a species name or code, or come from a ``species`` / ``common_name`` column.
    Raises `DataNotFoundError` for a missing file or column, a label that is neither an integer
    nor a known name, an empty path, a negative ``start_s`` or ``start_s >= end_s``.
    """
    return _load(source, root, rename, REQUIRED_COLUMNS, False, species)


def load_soundscape_manifest(
    source: str | Path | pd.DataFrame,
    root: str | Path | None = None,
    *,
    rename: Mapping[str, str] | None = None,
    species=None,
) -> pd.DataFrame:
    """Read soundscape annotations: one row per (file, segment, species), as BirdSet gives them.

    Like `load_manifest`, but ``start_s`` and ``end_s`` are required on every row, with
    ``0 <= start_s < end_s``. A segment with several species is several rows. For BirdSet's
    column names pass e.g. ``rename={"filepath": "path", "start_time": "start_s",
    "end_time": "end_s"}``.
    """
    return _load(source, root, rename, SOUNDSCAPE_COLUMNS, True, species)


def save_manifest(df: pd.DataFrame, path: str | Path, *, root: str | Path | None = None) -> Path:
    """Write a manifest as CSV or Parquet (by suffix); returns the path written.

    With ``root``, paths under it are written relative to it (posix separators), so the
    manifest can move with its data; load it back with the same ``root`` (or keep it there).
    """
    path = Path(path).expanduser()
    fmt = table_format(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataNotFoundError(
            f"cannot save a manifest without column(s) {', '.join(missing)} to {path}"
        )
    out = df.reset_index(drop=True)
    if root is not None:
        base = Path(root).expanduser().absolute()
        rel = []
        for p in out["path"].tolist():
            q = Path(p)
            rel.append(q.relative_to(base).as_posix() if q.is_relative_to(base) else str(p))
        out = out.assign(path=rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        out.to_parquet(path, index=False)
    else:
        out.to_csv(path, index=False)
    return path


def manifest_sha256(df: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """Hex SHA-256 of a manifest's content, for provenance.

    Depends on the row order and on every cell of ``columns`` (default: all), not on column
    order, index or dtypes: an int column and its text copy from CSV hash the same, NaN and an
    empty cell hash the same. Paths are hashed as they are, so the same data at another
    location hashes differently; pass ``columns`` without ``path`` where that must not matter.
    """
    names = sorted(str(c) for c in (df.columns if columns is None else columns))
    by_name = {str(c): c for c in df.columns}
    absent = [c for c in names if c not in by_name]
    if absent:
        raise DataNotFoundError(f"cannot hash column(s) {', '.join(absent)}: not in the manifest")
    digest = hashlib.sha256()
    digest.update(f"rows={len(df)}\n".encode())
    for name in names:
        cells = [canonical(v) for v in df[by_name[name]].tolist()]
        digest.update(json.dumps([name, cells], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def check_files(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Split a manifest into rows whose file exists and the paths that do not.

    Returns ``(present, missing)``: ``present`` is a copy with a fresh RangeIndex, ``missing``
    lists each absent path once, in first-seen order (a soundscape lists a file many times).
    """
    exists: dict[str, bool] = {}
    for p in df["path"].tolist():
        key = str(p)
        if key not in exists:
            exists[key] = os.path.isfile(key)
    mask = np.array([exists[str(p)] for p in df["path"].tolist()], dtype=bool)
    present = df.loc[mask].reset_index(drop=True)
    missing = [p for p, ok in exists.items() if not ok]
    return present, missing
