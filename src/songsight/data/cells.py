"""Cells of the tables people write, read as values: blanks, numbers (seconds, labels) and one
canonical text per value for hashing; offending rows quoted for one-line errors.

Helpers of `songsight.data.manifest`: a CSV cell is text, its Parquet copy a typed value, and
both must read (and hash) the same.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from songsight.errors import DataNotFoundError

SHOW = 5  # offending rows quoted in an error message


def quote_rows(df: pd.DataFrame, bad: np.ndarray, column: str) -> str:
    """The first `SHOW` rows of ``column`` where ``bad``, as ``row i: value`` for an error."""
    rows = np.flatnonzero(bad)
    shown = ", ".join(f"row {i}: {df[column].iloc[i]!r}" for i in rows[:SHOW])
    more = f" and {len(rows) - SHOW} more" if len(rows) > SHOW else ""
    return f"{shown}{more}"


def is_blank(value: object) -> bool:
    """None, NA, NaN, or text of only spaces."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def to_float(value: object) -> float:
    """Python's own parser for text, so a CSV round trip gives back the same float."""
    if is_blank(value):
        return math.nan
    if isinstance(value, str):
        return float(value.strip())
    return float(value)


def float_column(df: pd.DataFrame, column: str, name: str, *, allow_missing: bool) -> np.ndarray:
    """``column`` as float64 seconds (NaN for blanks where ``allow_missing``); one error quoting
    the rows that are not finite numbers."""
    values = np.empty(len(df), dtype=np.float64)
    bad = np.zeros(len(df), dtype=bool)
    for i, v in enumerate(df[column].tolist()):
        try:
            values[i] = to_float(v)
        except (TypeError, ValueError):
            values[i], bad[i] = math.nan, True
    bad |= np.isinf(values)
    if not allow_missing:
        bad |= np.isnan(values)
    if bad.any():
        need = "a number of seconds" if allow_missing else "a number of seconds on every row"
        raise DataNotFoundError(
            f"{name}: column {column!r} must hold {need}; {quote_rows(df, bad, column)}"
        )
    return values


def to_float_or_nan(value: object) -> float:
    """`to_float`, with NaN for anything that is not a number (a bool included)."""
    if isinstance(value, bool | np.bool_):
        return math.nan  # True is not a species label
    try:
        return to_float(value)
    except (TypeError, ValueError):
        return math.nan


def canonical(value: object) -> str:
    """One text form per value, the same for a value and its CSV or Parquet round trip."""
    if is_blank(value) and not isinstance(value, str):
        return ""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return repr(float(value))
    return str(value)
