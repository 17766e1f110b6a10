"""Photos a gallery already holds, found again by content hash: moved, or copied.

One rule for `build` and `add` alike: a gallery keeps one row per photo content.

- A photo whose stored file is gone but whose bytes turn up under another path has **moved**:
  its row takes the new path (ids do not change) and the user is told.
- A byte-identical **copy** of a photo already held (or met earlier in the same run) is not
  embedded again: it would only fill several result slots with one photo. Every name the user
  gave it (manifest label, species, common name ...) is kept on the one row: names fill the
  cells the photo does not have yet; a name that contradicts the photo's is reported, and
  the photo keeps the first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from songsight.gallery.format import STORE_FILE
from songsight.gallery.manifest import METADATA_COLUMNS, is_blank

__all__ = [
    "Sorted",
    "contradictions",
    "hash_files",
    "leave_out_removed",
    "merge_names",
    "rewrite_paths",
    "sort_photos",
    "stored_photos",
]

_SHOW = 3  # paths quoted per kind of note


@dataclass
class Sorted:
    """What to do with each photo of a run.

    ``embed``: new content, first path of each; ``unchanged``: already held at that path;
    ``moved``: stored path -> new path; ``copies``: path -> the path of the photo it copies.
    """

    embed: list[Path] = field(default_factory=list)
    unchanged: int = 0
    moved: dict[str, str] = field(default_factory=dict)
    copies: dict[str, str] = field(default_factory=dict)

    def notes(self) -> list[str]:
        out = []
        if self.moved:
            shown = "; ".join(f"{a} -> {b}" for a, b in list(self.moved.items())[:_SHOW])
            more = f" and {len(self.moved) - _SHOW} more" if len(self.moved) > _SHOW else ""
            out.append(f"{len(self.moved)} photo(s) moved, path updated: {shown}{more}")
        if self.copies:
            shown = "; ".join(f"{a} = {b}" for a, b in list(self.copies.items())[:_SHOW])
            more = f" and {len(self.copies) - _SHOW} more" if len(self.copies) > _SHOW else ""
            out.append(
                f"{len(self.copies)} byte-identical cop(ies) of photos held once, their names "
                f"kept: {shown}{more}"
            )
        return out


def stored_photos(directory: Path) -> dict[str, str]:
    """sha256 -> path of every photo in the store and in an interrupted run's parts."""
    import pyarrow.parquet as pq

    files = [directory / STORE_FILE] if (directory / STORE_FILE).is_file() else []
    files += sorted((directory / (STORE_FILE + ".parts")).glob("part-*.parquet"))
    out: dict[str, str] = {}
    for f in files:
        table = pq.read_table(f, columns=["path", "sha256"])
        for path, sha in zip(
            table.column("path").to_pylist(), table.column("sha256").to_pylist(), strict=True
        ):
            out.setdefault(sha, path)
    return out


def hash_files(files: list[Path]) -> dict[Path, str]:
    """Content hash of each readable file (an unreadable one is left for embedding to report)."""
    from songsight.inputs.files import sha256_file

    out = {}
    for f in files:
        try:
            out[f] = sha256_file(f)
        except OSError:
            pass
    return out


def sort_photos(files: list[Path], hashes: dict[Path, str], stored: dict[str, str]) -> Sorted:
    """Sort a run's ``files`` (with their ``hashes``; unreadable ones have none and are left
    for the embedding step to report) against the gallery's ``stored`` sha256 -> path."""
    out = Sorted()
    first: dict[str, str] = {}
    for f in files:
        sha, path = hashes.get(f), str(f)
        if sha is None:
            out.embed.append(f)
        elif sha in stored:
            held = stored[sha]
            if held == path:
                out.unchanged += 1
            elif held not in out.moved and (
                not os.path.exists(held) or os.path.normpath(held) == path
            ):  # gone from where it was (or stored un-normalised, "a/../b.png"): moved
                out.moved[held] = path
                stored[sha] = path
            else:
                out.copies[path] = held
        elif sha in first:
            out.copies[path] = first[sha]
        else:
            first[sha] = path
            out.embed.append(f)
    return out


def merge_names(pending, copies: dict[str, str]):
    """Manifest rows of copies moved onto the photo they copy; one row per path.

    ``pending``: the manifest's rows (``path`` and `METADATA_COLUMNS`). Returns the rows (a
    ``fill_only`` column marks the names that came from copies: they may fill a stored
    photo's empty cells but never replace its names) and notes on contradicting names.
    """
    import pandas as pd

    if pending is None or pending.empty:
        return pending, []
    df = pending.copy()
    df["fill_only"] = df["path"].isin(list(copies))
    df["path"] = [copies.get(p, p) for p in df["path"]]
    rows, notes = [], []
    for path, group in df.groupby("path", sort=False):
        if len(group) == 1:
            rows.append(group.iloc[0].to_dict())
            continue
        # A photo's own row first, then its copies' rows, each in manifest order.
        group = group.sort_values("fill_only", kind="stable")
        merged = group.iloc[0].to_dict()
        for rec in group.iloc[1:].to_dict("records"):
            for col in METADATA_COLUMNS:
                new, had = rec[col], merged[col]
                if is_blank(new):
                    continue
                if is_blank(had):
                    merged[col] = new
                elif col in ("label", "species", "common_name") and str(new) != str(had):
                    notes.append(
                        f"{path}: a copy is named {new!r}, the photo {had!r}; kept {had!r}"
                    )
        merged["fill_only"] = bool(group["fill_only"].all())
        rows.append(merged)
    out = pd.DataFrame(rows, columns=[*pending.columns, "fill_only"])
    out["label"] = out["label"].astype("Int64")
    return out, notes[:_SHOW] + (
        [f"... and {len(notes) - _SHOW} more"] if len(notes) > _SHOW else []
    )


def contradictions(directory: Path, pending) -> list[str]:
    """Notes on copies named otherwise than the stored photo they copy (which keeps its names)."""
    import pyarrow.parquet as pq

    store = directory / STORE_FILE
    if pending is None or pending.empty or not store.is_file() or not pending["fill_only"].any():
        return []
    names = [c for c in ("label", "species", "common_name") if c in pq.read_schema(store).names]
    held = pq.read_table(store, columns=["path", *names]).to_pandas().set_index("path")
    notes = []
    for rec in pending[pending["fill_only"]].to_dict("records"):
        if rec["path"] not in held.index:
            continue
        for col in names:
            had, new = held.at[rec["path"], col], rec.get(col)
            if not is_blank(had) and not is_blank(new) and str(had) != str(new):
                notes.append(
                    f"{rec['path']}: a copy is named {new!r}, the photo {had!r}; kept {had!r}"
                )
    return notes[:_SHOW] + ([f"... and {len(notes) - _SHOW} more"] if len(notes) > _SHOW else [])


def rewrite_paths(directory: Path, moved: dict[str, str]) -> None:
    """Give moved photos their new paths in the store and any unmerged parts (atomically, row
    order and so ids kept)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not moved:
        return
    files = [directory / STORE_FILE] if (directory / STORE_FILE).is_file() else []
    files += sorted((directory / (STORE_FILE + ".parts")).glob("part-*.parquet"))
    for f in files:
        table = pq.read_table(f)
        old = table.column("path").to_pylist()
        if not any(p in moved for p in old):
            continue
        paths = pa.array([moved.get(p, p) for p in old], pa.string())
        out = table.set_column(table.column_names.index("path"), "path", paths)
        tmp = f.with_name(f.name + ".tmp")
        pq.write_table(out.replace_schema_metadata(table.schema.metadata), tmp)
        os.replace(tmp, f)


def leave_out_removed(meta: dict | None, files: list[Path], hashes: dict[Path, str],
                       named: set[Path]) -> tuple[list[Path], str | None]:  # fmt: skip
    """(the files to take, a note or None): photos removed with ``index remove`` stay out when
    a folder walk meets them again; one given by name comes back (and leaves ``removed``)."""
    removed = (meta or {}).get("removed") or {}
    if not removed:
        return files, None
    kept, left_out = [], []
    for f in files:
        sha = hashes.get(f)
        if sha in removed and f not in named:
            left_out.append(f)
            continue
        removed.pop(sha, None)
        kept.append(f)
    if not left_out:
        return kept, None
    shown = ", ".join(map(str, left_out[:3])) + (" ..." if len(left_out) > 3 else "")
    return kept, (
        f"{len(left_out)} photo(s) removed earlier with `index remove` left out: {shown} "
        "(add one by its path, or a manifest row, to bring it back)"
    )
