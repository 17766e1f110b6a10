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

Stored as CSV or Parquet, chosen by suffix. CSV manifests are read as text first so that ids
such as ``1e5`` or ``0123`` are never turned into numbers; known columns are then converted, and
extra columns stay text (use Parquet to keep their types). `manifest_sha256` hashes the content
in a type-insensitive canonical form, so a manifest and its CSV or Parquet copy hash the same.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from songsight.errors import DataNotFoundError

REQUIRED_COLUMNS = ("path", "label")
OPTIONAL_COLUMNS = ("split", "start_s", "end_s")
SOUNDSCAPE_COLUMNS = ("path", "start_s", "end_s", "label")

_CSV_SUFFIXES = (".csv", ".csv.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_SHOW = 5  # offending rows quoted in an error message


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    raise DataNotFoundError(
        f"{path}: unsupported manifest format; use one of "
        f"{', '.join(_CSV_SUFFIXES + _PARQUET_SUFFIXES)}"
    )


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV (every column as text, empty cells as ``""``) or Parquet table."""
    path = Path(path).expanduser()
    fmt = _format_of(path)
    if not path.is_file():
        raise DataNotFoundError(f"manifest not found: {path}")
    if fmt == "parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _quote(df: pd.DataFrame, bad: np.ndarray, column: str) -> str:
    rows = np.flatnonzero(bad)
    shown = ", ".join(f"row {i}: {df[column].iloc[i]!r}" for i in rows[:_SHOW])
    more = f" and {len(rows) - _SHOW} more" if len(rows) > _SHOW else ""
    return f"{shown}{more}"


def _is_blank(value: object) -> bool:
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _to_float(value: object) -> float:
    """Python's own parser for text, so a CSV round trip gives back the same float."""
    if _is_blank(value):
        return math.nan
    if isinstance(value, str):
        return float(value.strip())
    return float(value)


def _float_column(df: pd.DataFrame, column: str, name: str, *, allow_missing: bool) -> np.ndarray:
    values = np.empty(len(df), dtype=np.float64)
    bad = np.zeros(len(df), dtype=bool)
    for i, v in enumerate(df[column].tolist()):
        try:
            values[i] = _to_float(v)
        except (TypeError, ValueError):
            values[i], bad[i] = math.nan, True
    bad |= np.isinf(values)
    if not allow_missing:
        bad |= np.isnan(values)
    if bad.any():
        need = "a number of seconds" if allow_missing else "a number of seconds on every row"
        raise DataNotFoundError(
            f"{name}: column {column!r} must hold {need}; {_quote(df, bad, column)}"
        )
    return values


def _int_labels(df: pd.DataFrame, name: str) -> np.ndarray:
    values = np.array([_to_float_or_nan(v) for v in df["label"].tolist()], dtype=np.float64)
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        raise DataNotFoundError(
            f"{name}: column 'label' must hold integer species labels (as in taxa.csv); "
            f"{_quote(df, bad, 'label')}"
        )
    return values.astype(np.int64)


def _to_float_or_nan(value: object) -> float:
    if isinstance(value, bool | np.bool_):
        return math.nan  # True is not a species label
    try:
        return _to_float(value)
    except (TypeError, ValueError):
        return math.nan


def _resolve_paths(df: pd.DataFrame, root: Path | None, name: str) -> list[str]:
    raw = df["path"].tolist()
    bad = np.array([_is_blank(p) for p in raw], dtype=bool)
    if bad.any():
        raise DataNotFoundError(f"{name}: column 'path' has empty cells; {_quote(df, bad, 'path')}")
    out = []
    for p in raw:
        q = Path(str(p).strip()).expanduser()
        if root is not None and not q.is_absolute():
            q = root / q
        out.append(str(q))
    return out


def _validate(
    df: pd.DataFrame,
    *,
    root: Path | None,
    name: str,
    required: Sequence[str],
    interval_required: bool,
) -> pd.DataFrame:
    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        optional = [c for c in OPTIONAL_COLUMNS if c not in required]
        raise DataNotFoundError(
            f"{name}: missing column(s) {', '.join(missing)}; a manifest needs "
            f"{', '.join(required)} (optional: {', '.join(optional)}); "
            f"found {', '.join(map(str, df.columns)) or 'no columns'}"
        )
    df = df.reset_index(drop=True)
    df["path"] = _resolve_paths(df, root, name)
    df["label"] = _int_labels(df, name)
    if "split" in df.columns:
        df["split"] = ["" if _is_blank(s) else str(s).strip() for s in df["split"].tolist()]
    for column in ("start_s", "end_s"):
        if column in df.columns:
            df[column] = _float_column(df, column, name, allow_missing=not interval_required)
    if "start_s" in df.columns:
        bad = (df["start_s"] < 0).to_numpy()
        if bad.any():
            raise DataNotFoundError(f"{name}: negative start_s; {_quote(df, bad, 'start_s')}")
    if "start_s" in df.columns and "end_s" in df.columns:
        start, end = df["start_s"].to_numpy(), df["end_s"].to_numpy()
        # NaN compares False, so rows without an interval pass.
        bad = start >= end
        if bad.any():
            rows = np.flatnonzero(bad)
            shown = ", ".join(f"row {i}: {start[i]:g} >= {end[i]:g}" for i in rows[:_SHOW])
            raise DataNotFoundError(
                f"{name}: start_s must be < end_s; {shown}"
                + (f" and {len(rows) - _SHOW} more" if len(rows) > _SHOW else "")
            )
    return df


def _load(
    source: str | Path | pd.DataFrame,
    root: str | Path | None,
    rename: Mapping[str, str] | None,
    required: Sequence[str],
    interval_required: bool,
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
        df, root=base, name=name, required=required, interval_required=interval_required
    )


def load_manifest(
    source: str | Path | pd.DataFrame,
    root: str | Path | None = None,
    *,
    rename: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Read and validate a manifest (CSV, Parquet or a DataFrame, which is not modified).

    Returns a new DataFrame with a fresh RangeIndex: ``path`` (str, relative paths joined to
    ``root``, default the manifest file's folder; a DataFrame's relative paths stay as they are
    unless ``root`` is given), ``label`` (int64), ``split`` (str, ``""`` when blank) and
    ``start_s`` / ``end_s`` (float64, NaN when blank) where present, then every other column.
    ``rename`` maps source column names to manifest ones first, e.g. ``{"filepath": "path"}``.
    Raises `DataNotFoundError` for a missing file or column, a non-integer label, an empty path,
    a negative ``start_s`` or ``start_s >= end_s``.
    """
    return _load(source, root, rename, REQUIRED_COLUMNS, interval_required=False)


def load_soundscape_manifest(
    source: str | Path | pd.DataFrame,
    root: str | Path | None = None,
    *,
    rename: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Read soundscape annotations: one row per (file, segment, species), as BirdSet gives them.

    Like `load_manifest`, but ``start_s`` and ``end_s`` are required on every row, with
    ``0 <= start_s < end_s``. A segment with several species is several rows. For BirdSet's
    column names pass e.g. ``rename={"filepath": "path", "start_time": "start_s",
    "end_time": "end_s"}``.
    """
    return _load(source, root, rename, SOUNDSCAPE_COLUMNS, interval_required=True)


def save_manifest(df: pd.DataFrame, path: str | Path, *, root: str | Path | None = None) -> Path:
    """Write a manifest as CSV or Parquet (by suffix); returns the path written.

    With ``root``, paths under it are written relative to it (posix separators), so the
    manifest can move with its data; load it back with the same ``root`` (or keep it there).
    """
    path = Path(path).expanduser()
    fmt = _format_of(path)
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


def _canonical(value: object) -> str:
    """One text form per value, the same for a value and its CSV or Parquet round trip."""
    if _is_blank(value) and not isinstance(value, str):
        return ""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return repr(float(value))
    return str(value)


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
        cells = [_canonical(v) for v in df[by_name[name]].tolist()]
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
