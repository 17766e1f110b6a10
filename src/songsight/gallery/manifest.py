"""Photo manifests for a gallery: paths and species metadata, read and normalised.

`read_gallery_manifest` turns a CSV/Parquet manifest (or DataFrame), optionally completed from
an SSW60 ``taxa.csv`` species table, into the `METADATA_COLUMNS` a gallery stores per photo.
The species table's ranks are stored too (`RANK_COLUMNS`), so that a gallery's species
(`songsight.gallery.Gallery.species_list`) are the table's, and give the same
prompts at search time as at distillation and evaluation.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from songsight.errors import DataNotFoundError
from songsight.gallery.format import PENDING_FILE, STORE_FILE

__all__ = [
    "MANIFEST_COLUMNS",
    "METADATA_COLUMNS",
    "RANK_COLUMNS",
    "attach_metadata",
    "is_blank",
    "rank_cell",
    "read_gallery_manifest",
    "store_pending",
]

# What a photo manifest names per photo; ``species`` is the scientific name (a manifest may
# call it scientific_name).
MANIFEST_COLUMNS = ("label", "species", "common_name", "genus", "family", "order", "species_code")
# The ranks above order, from the species table only (a manifest's ``class`` is its label).
# In the store, null is unknown (read as Animalia, Chordata, Aves, as every gallery stored
# before these columns is) and "" a rank the table leaves blank.
RANK_COLUMNS = ("kingdom", "phylum", "class")
# Per-photo metadata a gallery stores.
METADATA_COLUMNS = (*MANIFEST_COLUMNS, *RANK_COLUMNS)
_PAREN = re.compile(r"\s*\(.*?\)\s*")
_BINOMIAL = re.compile(r"[A-Z][a-z]+(?: [a-z][a-z-]+){1,2}")


def is_blank(value: Any) -> bool:
    """Whether a metadata cell says nothing: None, NaN, NA, or empty or blank text."""
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    try:
        import pandas as pd

        if value is pd.NA:
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(value, str) and not value.strip()


def rank_cell(value: Any) -> str | None:
    """A stored rank: None where unknown (null, NaN, NA), else its text, ``""`` included."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    import pandas as pd

    return None if value is pd.NA else str(value).strip()


def _text(value: Any) -> str | None:
    return None if is_blank(value) else str(value).strip()


def _rank(value: Any) -> str | None:
    """SSW60 writes family as "Anatidae (Ducks, Geese, and Waterfowl)": keep the Latin name."""
    text = _text(value)
    return (_PAREN.sub(" ", text).strip() or None) if text else None


def _is_binomial(text: str) -> bool:
    return bool(_BINOMIAL.fullmatch(text))


def read_gallery_manifest(manifest, species_csv: str | Path | None = None):
    """A photo manifest -> DataFrame of ``path`` (absolute, normalised) and `METADATA_COLUMNS`.

    ``manifest``: CSV/Parquet path or DataFrame with ``path`` and any of ``label``,
    ``species`` (or ``scientific_name``), ``common_name``, ``species_code``, ``genus``,
    ``family``, ``order``; column names as people write them (``Common name``,
    ``Scientific_Name``; see `songsight.data.manifest.COLUMN_ALIASES`). Relative paths are
    taken from the manifest's folder. A ``label`` is an integer or a species name. With
    ``species_csv`` (SSW60 ``taxa.csv`` columns) a label or a name is enough: the other names
    and ranks come from the table, and a manifest's own non-empty cells win over it. Without
    it a name in ``label`` is stored as the scientific name when it reads as one (``Genus
    species``), else as the common name. A missing genus is taken from the first word of the
    scientific name. Unknown cells are None; columns songsight does not read are listed in
    ``df.attrs["ignored_columns"]``.
    """
    import pandas as pd

    from songsight.data.manifest import (
        name_key,
        normalise_columns,
        read_table,
        resolve_paths,
        species_lookup,
    )
    from songsight.taxonomy import load_species_csv

    if isinstance(manifest, pd.DataFrame):
        df, root, name = manifest.copy(), None, "manifest"
    else:
        path = Path(manifest).expanduser()
        df, root, name = read_table(path), path.absolute().parent, str(path)
    known = ("path", *MANIFEST_COLUMNS, "scientific_name", "split")
    df, ignored = normalise_columns(df, name, known)
    if "scientific_name" in df.columns:
        if "species" in df.columns:
            raise DataNotFoundError(
                f"{name}: both 'species' and 'scientific_name' columns; keep one (they mean the same)"
            )
        df = df.rename(columns={"scientific_name": "species"})
    found = ", ".join(map(str, df.columns)) or "no columns"
    if "path" not in df.columns:
        raise DataNotFoundError(
            f"{name}: no 'path' column (found {found}); a photo manifest needs path and any "
            f"of {', '.join(MANIFEST_COLUMNS)}"
        )
    if ignored and not any(c in df.columns for c in MANIFEST_COLUMNS):
        raise DataNotFoundError(
            f"{name}: no column songsight reads besides path; unknown column(s) "
            f"{', '.join(ignored)}. Name the species in one of {', '.join(MANIFEST_COLUMNS)} "
            "(or scientific_name)"
        )
    df = df.reset_index(drop=True)
    paths = resolve_paths(df, root, name)
    table = load_species_csv(species_csv) if species_csv is not None else []
    taxa = {s.label: s for s in table}
    lookup = species_lookup(table)
    rows, unknown_labels, unknown_names = [], [], []
    for i, rec in enumerate(df.to_dict("records")):
        label, named = _label_cell(rec.get("label"))
        sp = None
        if label is not None:
            sp = taxa.get(label)
            if table and sp is None:
                unknown_labels.append(label)
        elif table:
            # A name in the label column, else the row's own names, looked up in the table.
            for text in (
                named,
                rec.get("species"),
                rec.get("common_name"),
                rec.get("species_code"),
            ):
                if _text(text) and name_key(text) in lookup:
                    label = lookup[name_key(text)]
                    sp = taxa[label]
                    break
            else:
                if named is not None:
                    unknown_names.append(f"row {i}: {named!r}")
        species = _text(rec.get("species")) or (sp.scientific_name if sp else None)
        common = _text(rec.get("common_name")) or (sp.common_name if sp else None)
        if named is not None and sp is None:
            if _is_binomial(named):
                species = species or named
            else:
                common = common or named
        genus = _text(rec.get("genus")) or (sp.genus if sp else None)
        if genus is None and species:
            genus = species.split()[0]
        rows.append(
            {
                "path": paths[i],
                "label": label,
                "species": species,
                "common_name": common,
                "genus": genus,
                "family": _rank(rec.get("family")) or (sp.family or None if sp else None),
                "order": _rank(rec.get("order")) or (sp.order or None if sp else None),
                "species_code": _text(rec.get("species_code")) or (sp.code or None if sp else None),
                # The table's ranks as they are, blank ones too; unknown without a table.
                "kingdom": sp.kingdom if sp else None,
                "phylum": sp.phylum if sp else None,
                "class": sp.class_ if sp else None,
            }
        )
    if unknown_labels:
        raise DataNotFoundError(
            f"{name}: label(s) {sorted(set(unknown_labels))[:5]} are not in the species table "
            f"{species_csv}"
        )
    if unknown_names:
        raise DataNotFoundError(
            f"{name}: species names in the label column that are not in the species table "
            f"{species_csv}: {', '.join(unknown_names[:5])}"
        )
    out = pd.DataFrame(rows, columns=["path", *METADATA_COLUMNS])
    out["label"] = out["label"].astype("Int64")
    out.attrs["ignored_columns"] = [c for c in ignored if c != "split"]
    return out


def _label_cell(value: Any) -> tuple[int | None, str | None]:
    """A label cell -> (integer label, None) or (None, species name) or (None, None) if blank."""
    if is_blank(value) or isinstance(value, bool):
        return None, None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None, str(value).strip()
    if number != number or number != round(number) or abs(number) == float("inf"):
        return None, str(value).strip()
    return int(number), None


def store_pending(directory: Path, meta) -> None:
    """Park manifest metadata before embedding (earlier parked rows kept; newer ones win)."""
    import pandas as pd

    if meta is None or meta.empty:
        return
    f = directory / PENDING_FILE
    if "fill_only" not in meta:
        meta = meta.assign(fill_only=False)
    if f.is_file():
        meta = pd.concat([pd.read_parquet(f), meta], ignore_index=True)
    meta = meta.drop_duplicates("path", keep="last").reset_index(drop=True)
    tmp = f.with_name(f.name + ".tmp")
    meta.to_parquet(tmp, index=False)
    os.replace(tmp, f)


def attach_metadata(directory: Path) -> list[str]:
    """Join parked metadata onto the store's rows by path; returns the sha256 column.

    The store always ends with every `METADATA_COLUMNS` column (null where unknown) between
    ``sha256`` and ``embedding``; it is rewritten only when something changes.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    store, pending_file = directory / STORE_FILE, directory / PENDING_FILE
    schema = pq.read_schema(store)
    pending = pd.read_parquet(pending_file) if pending_file.is_file() else None
    missing_cols = [c for c in METADATA_COLUMNS if c not in schema.names]
    if pending is None and not missing_cols:
        return pq.read_table(store, columns=["sha256"]).column("sha256").to_pylist()
    table = pq.read_table(store)
    cur = table.select(["path"] + [c for c in METADATA_COLUMNS if c in schema.names]).to_pandas()
    for col in missing_cols:
        cur[col] = None
    if pending is not None and len(pending):
        upd = pending.drop_duplicates("path", keep="last").set_index("path")
        fill_only = (
            cur["path"].map(upd["fill_only"]).fillna(False).astype(bool)
            if "fill_only" in upd
            else pd.Series(False, index=cur.index)
        )
        for col in METADATA_COLUMNS:
            if col not in upd:
                continue
            new = cur["path"].map(upd[col])
            # A manifest's non-empty cells win; an empty one never erases what is known, and
            # a copy's names only fill what the photo does not know (`songsight.gallery.dedupe`).
            cur[col] = new.where(new.notna() & (~fill_only | cur[col].isna()), cur[col])
    columns = {
        "label": pa.array([None if is_blank(v) else int(v) for v in cur["label"]], type=pa.int64()),
        **{
            c: pa.array([_text(v) for v in cur[c]], type=pa.string())
            for c in MANIFEST_COLUMNS
            if c != "label"
        },
        # A rank the table leaves blank stays "" (no rank), apart from an unknown one (null).
        **{c: pa.array([rank_cell(v) for v in cur[c]], type=pa.string()) for c in RANK_COLUMNS},
    }
    rest = [c for c in table.column_names if c not in METADATA_COLUMNS]
    ordered = {}
    for name in rest:
        if name == "embedding":
            ordered.update(columns)
        ordered[name] = table.column(name)
    out = pa.table(ordered).replace_schema_metadata(schema.metadata)
    tmp = store.with_name(store.name + ".tmp")
    pq.write_table(out, tmp)
    os.replace(tmp, store)
    pending_file.unlink(missing_ok=True)
    return out.column("sha256").to_pylist()
