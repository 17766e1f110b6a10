"""Search results written out: the JSON records, a terminal table, CSV / JSON / Parquet
files and Raven selection tables, from `songsight.retrieval.results.WindowResult` lists.

Every format carries each result's ``flags`` (``silent``, ``too_short``: no usable signal, so
no photos and no species) and honours ``--min-score`` the same way, since the filter is
applied to the results before any of them is written (`songsight.retrieval.results.keep_detections`).
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from songsight.errors import SongsightError
from songsight.outputs import replace_atomically, write_text_atomically

if TYPE_CHECKING:
    from songsight.retrieval.results import SpeciesScore, WindowResult

__all__ = [
    "CSV_COLUMNS",
    "OUTPUT_FORMATS",
    "RAVEN_COLUMNS",
    "format_table",
    "raven_table_names",
    "results_to_records",
    "write_raven",
    "write_results",
]

OUTPUT_FORMATS = ("table", "csv", "json", "parquet")
RAVEN_COLUMNS = (
    "Selection",
    "View",
    "Channel",
    "Begin Time (s)",
    "End Time (s)",
    "Low Freq (Hz)",
    "High Freq (Hz)",
    "Begin Path",
    "File Offset (s)",
    "Species",
    "Score",
    "Flags",
)


def results_to_records(results: Sequence[WindowResult]) -> list[dict]:
    """The JSON contract: one dict per recording and window.

    Keys: ``path``, ``start_s``, ``end_s``, ``window`` (None for the whole recording),
    ``answered_by``, ``flags`` (``silent`` / ``too_short``, empty when the signal is usable),
    ``hits`` (``image``, ``score``, ``image_id``, and ``species``, ``label``,
    ``common_name`` when known), ``species`` (``name``, ``score`` (a probability), ``rank``,
    ``label``, ``common_name``) and ``error`` when the recording could not be used.
    """
    records = []
    for r in results:
        rec: dict[str, Any] = {
            "path": r.path,
            "start_s": round(float(r.start_s), 6),
            "end_s": round(float(r.end_s), 6),
            "window": r.window,
            "answered_by": r.answered_by,
            "flags": list(r.flags),
            "hits": [
                {k: v for k, v in asdict(h).items() if v is not None or k in ("image", "score")}
                for h in r.hits
            ],
            "species": [asdict(s) for s in r.species],
        }
        if r.error is not None:
            rec["error"] = r.error
        records.append(rec)
    return records


def _top(result: WindowResult, rank: str = "species") -> SpeciesScore | None:
    return next((s for s in result.species if s.rank == rank), None)


def _probability(p: float) -> str:
    """A species probability for people: ``0.41``, and ``<0.01`` rather than a row of zeros."""
    return f"{p:.2f}" if p >= 0.005 or p == 0 else "<0.01"


def _flag_text(flags: Sequence[str]) -> str:
    from songsight.retrieval.results import FLAGS

    return "; ".join(f"{f.upper().replace('_', ' ')}: {FLAGS.get(f, f)}" for f in flags)


def format_table(results: Sequence[WindowResult], max_hits: int | None = None) -> str:
    """A readable terminal report: the whole recording in full (every photo found, or the
    first ``max_hits``), windows one line each; species scores are probabilities."""
    lines: list[str] = []
    for r in results:
        span = f"{r.start_s:8.2f}-{r.end_s:8.2f} s"
        if r.error is not None:
            lines += ["", f"== {r.path}  ERROR: {r.error}"]
            continue
        if r.window is None:
            lines += ["", f"== {r.path}  {r.end_s:.2f} s  (answered by {r.answered_by})"]
            if r.flags:
                lines.append(f"   NO ANSWER  {_flag_text(r.flags)}")
            for rank in ("species", "genus", "family"):
                taxa = [s for s in r.species if s.rank == rank]
                if taxa:
                    text = " | ".join(
                        f"{s.name}{f' ({s.common_name})' if s.common_name and s.common_name != s.name else ''} {_probability(s.score)}"
                        for s in taxa
                    )
                    lines.append(f"   {rank:<8} {text}")
            for n, h in enumerate(r.hits[:max_hits], 1):
                lines.append(f"   {n:>3}. {h.score:7.4f}  {h.species or '-':<28} {h.image}")
            continue
        top = _top(r)
        best = r.hits[0] if r.hits else None
        lines.append(
            f"   [{span}]  "
            + (f"[{', '.join(r.flags)}]" if r.flags else "")
            + (f"{top.name} {_probability(top.score)}" if top else "" if r.flags else "-")
            + (f"  | best photo {best.score:.4f} {best.image}" if best else "")
        )
    return "\n".join(lines).lstrip("\n") + "\n"


CSV_COLUMNS = (
    "path", "window", "start_s", "end_s", "answered_by", "error", "flags", "rank", "image_id",
    "image", "score", "species", "label", "top_species", "top_species_score",
)  # fmt: skip


def _csv_rows(results: Sequence[WindowResult]) -> Iterator[dict]:
    for r in results:
        top = _top(r)
        base = {
            "path": r.path,
            "window": "" if r.window is None else r.window,
            "start_s": f"{r.start_s:.6g}",
            "end_s": f"{r.end_s:.6g}",
            "answered_by": r.answered_by,
            "error": r.error or "",
            "flags": ";".join(r.flags),
            "top_species": top.name if top else "",
            "top_species_score": f"{top.score:.6g}" if top else "",
        }
        if not r.hits:
            yield {
                **base,
                "rank": "",
                "image_id": "",
                "image": "",
                "score": "",
                "species": "",
                "label": "",
            }
        for n, h in enumerate(r.hits, 1):
            yield {
                **base,
                "rank": n,
                "image_id": h.image_id,
                "image": h.image,
                "score": f"{h.score:.6g}",
                "species": h.species or "",
                "label": "" if h.label is None else h.label,
            }


def write_results(
    results: Sequence[WindowResult],
    fmt: str = "table",
    out: str | Path | None = None,
    provenance: dict | None = None,
) -> None:
    """Write results as ``table``, ``csv`` (one row per hit), ``json`` (`results_to_records`)
    or ``parquet`` (the same records, nested; provenance in the schema metadata).

    ``out`` None writes to stdout (not for parquet).
    """
    if fmt not in OUTPUT_FORMATS:
        raise SongsightError(f"format must be one of {', '.join(OUTPUT_FORMATS)}, not {fmt!r}")
    if fmt == "parquet":
        if out is None:
            raise SongsightError("--format parquet needs --out FILE")
        import pyarrow as pa
        import pyarrow.parquet as pq

        records = results_to_records(results)
        for rec in records:
            rec.setdefault("error", None)
        table = (
            pa.Table.from_pylist(records)
            if records
            else pa.table({"path": pa.array([], pa.string())})
        )
        meta = {b"songsight": json.dumps(provenance or {}, sort_keys=True, default=str).encode()}
        with replace_atomically(out) as tmp:
            pq.write_table(table.replace_schema_metadata(meta), tmp)
        return
    if fmt == "table":
        text = format_table(results)
    elif fmt == "json":
        text = json.dumps(results_to_records(results), indent=1) + "\n"
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(_csv_rows(results))
        text = buf.getvalue()
    if out is None:
        sys.stdout.write(text)
    else:
        write_text_atomically(out, text)


def write_raven(
    results: Sequence[WindowResult],
    directory: str | Path,
    high_freq_hz: float,
    min_score: float = 0.0,
) -> list[Path]:
    """One Raven selection table per recording: ``DIR/<stem>.selections.txt``, tab-separated.

    One selection per window (the whole recording when it has a single window), with the top
    species and its probability (the best photo's species and cosine when the gallery has no
    species names) and the window's flags. A flagged window (silent, too short) has no species
    and an empty score, never ``nan``. Each row names its recording in Raven's own columns,
    ``Begin Path`` (the file, absolute; ``<array i>`` for in-memory audio) and ``File Offset
    (s)`` (where the selection begins in it), so tables whose names collide
    (``rec1.selections.txt``, ``rec1_2.selections.txt``) can be traced. With ``min_score``
    only the selections whose top species scores at least that are written: the table is a
    list of detections (pass the results unfiltered, so a long recording is never mistaken for
    a one-window one). Recordings that failed get no table.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    by_path: dict[str, list[WindowResult]] = {}
    for r in results:
        by_path.setdefault(r.path, []).append(r)
    written = []
    for rows, name in zip(by_path.values(), raven_table_names(list(by_path)), strict=True):
        if any(r.error is not None for r in rows):
            continue
        windows = [r for r in rows if r.window is not None] or [r for r in rows if r.window is None]
        if min_score > 0:
            windows = [r for r in windows if (_top(r) is not None and _top(r).score >= min_score)]
        begin_path = _begin_path(rows[0].path)
        with replace_atomically(directory / name) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:  # fmt: skip
            w = csv.writer(fh, delimiter="\t", lineterminator="\n")
            w.writerow(RAVEN_COLUMNS)
            for sel, r in enumerate(windows, 1):
                label, score = _raven_answer(r)
                w.writerow(
                    [sel, "Spectrogram 1", 1, f"{r.start_s:.3f}", f"{r.end_s:.3f}", "0.0",
                     f"{high_freq_hz:.1f}", begin_path, f"{r.start_s:.3f}", label, score,
                     ";".join(r.flags)]
                )  # fmt: skip
        written.append(directory / name)
    return written


def _raven_answer(r: WindowResult) -> tuple[str, str]:
    """A selection's species and score text: the top species, else the best photo's; both
    empty when there is neither (a flagged window: no signal, so no answer and no score)."""
    top = _top(r)
    if top is not None:
        return top.name, f"{top.score:.4f}"
    if r.hits:
        return r.hits[0].species or "", f"{r.hits[0].score:.4f}"
    return "", ""


def _begin_path(path: str) -> str:
    """Raven's ``Begin Path``: the recording's file made absolute (Raven opens it from there);
    an in-memory recording's name (``<array i>``) as it is."""
    if path.startswith("<") and path.endswith(">"):
        return path
    return str(Path(path).absolute())


def raven_table_names(paths: Sequence[str]) -> list[str]:
    """The selection table file name of each distinct recording path, in order."""
    names, used = [], set()
    for path in dict.fromkeys(paths):
        stem = re.sub(r"[^\w.-]+", "_", Path(path).stem).strip("_") or "recording"
        name, n = f"{stem}.selections.txt", 2
        while name in used:
            name, n = f"{stem}_{n}.selections.txt", n + 1
        used.add(name)
        names.append(name)
    return names
