"""Photo manifests for a gallery: paths and species metadata, read and normalised.

`read_gallery_manifest` turns a CSV/Parquet manifest (or DataFrame), optionally completed from
an SSW60 ``taxa.csv`` species table, into the `METADATA_COLUMNS` a gallery stores per photo.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from songsight.errors import DataNotFoundError

__all__ = ["METADATA_COLUMNS", "read_gallery_manifest"]

# Per-photo metadata; ``species`` is the scientific name (a manifest may call it scientific_name).
METADATA_COLUMNS = ("label", "species", "common_name", "genus", "family", "order")
_PAREN = re.compile(r"\s*\(.*?\)\s*")


def _blank(value: Any) -> bool:
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


def _text(value: Any) -> str | None:
    return None if _blank(value) else str(value).strip()


def _rank(value: Any) -> str | None:
    """SSW60 writes family as "Anatidae (Ducks, Geese, and Waterfowl)": keep the Latin name."""
    text = _text(value)
    return (_PAREN.sub(" ", text).strip() or None) if text else None


def read_gallery_manifest(manifest, species_csv: str | Path | None = None):
    """A photo manifest -> DataFrame of ``path`` (absolute) and `METADATA_COLUMNS`.

    ``manifest``: CSV/Parquet path or DataFrame with ``path`` and any of ``label``,
    ``species`` (or ``scientific_name``), ``common_name``, ``genus``, ``family``, ``order``.
    With ``species_csv`` (SSW60 ``taxa.csv`` columns) a ``label`` column is enough: the names
    and ranks come from the table, and a manifest's own non-empty cells win over it. A missing
    genus is taken from the first word of the scientific name. Unknown cells are None.
    """
    import pandas as pd

    from songsight.data.manifest import load_manifest, read_table
    from songsight.taxonomy import load_species_csv

    if isinstance(manifest, pd.DataFrame):
        df, root, name = manifest.copy(), None, "manifest"
    else:
        path = Path(manifest).expanduser()
        df, root, name = read_table(path), path.parent, str(path)
    df.columns = [str(c).strip() for c in df.columns]
    if "species" not in df.columns and "scientific_name" in df.columns:
        df = df.rename(columns={"scientific_name": "species"})
    has_label = "label" in df.columns
    # load_manifest validates paths and labels; a label-less manifest gets a placeholder.
    checked = load_manifest(df if has_label else df.assign(label=0), root=root)
    taxa = {}
    if species_csv is not None:
        if not has_label:
            raise DataNotFoundError(
                f"{name}: a species table was given but the manifest has no 'label' column "
                "to look the species up by"
            )
        taxa = {s.label: s for s in load_species_csv(species_csv)}
        unknown = sorted(set(int(v) for v in checked["label"]) - set(taxa))
        if unknown:
            raise DataNotFoundError(
                f"{name}: label(s) {unknown[:5]} are not in the species table {species_csv}"
            )
    rows = []
    for rec in checked.to_dict("records"):
        label = int(rec["label"]) if has_label else None
        sp = taxa.get(label) if label is not None else None
        species = _text(rec.get("species")) or (sp.scientific_name if sp else None)
        genus = _text(rec.get("genus")) or (sp.genus if sp else None)
        if genus is None and species:
            genus = species.split()[0]
        rows.append(
            {
                "path": rec["path"],
                "label": label,
                "species": species,
                "common_name": _text(rec.get("common_name")) or (sp.common_name if sp else None),
                "genus": genus,
                "family": _rank(rec.get("family")) or (sp.family or None if sp else None),
                "order": _rank(rec.get("order")) or (sp.order or None if sp else None),
            }
        )
    out = pd.DataFrame(rows, columns=["path", *METADATA_COLUMNS])
    out["label"] = out["label"].astype("Int64")
    return out
