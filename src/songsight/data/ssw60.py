"""An extracted SSW60 folder -> species list and audio / image manifests. Nothing about models.

SSW60 (Van Horn et al., ECCV 2022; github.com/visipedia/ssw60) ships as ``ssw60.tar.gz``,
which extracts into ``ssw60/``. `SSW60` accepts that folder or its parent. The layout, which
a simulated dataset must reproduce exactly (column lists are the ``*_COLUMNS`` constants)::

    ssw60/
      taxa.csv            label, species_code, inat_taxon_id, inat2021_label, nabirds_labels,
                          common_name, scientific_name, family, order
                          (family reads "Anatidae (Ducks, Geese, and Waterfowl)"; labels 0..59)
      audio_ml.csv        asset_id, label, split, samplerate, channels, samples, duration_seconds
      audio_ml/{asset_id}.wav         mono, 22,050 Hz, 10 s; ids are Macaulay Library numbers;
                                      split train (2,597) / test (1,264)
      images_nabirds.csv  asset_id, label, split, height, width, channels, photographer
      images_nabirds/{asset_id}.jpg   ids are 32-digit hex strings; train (5,050) / test (5,171);
                                      one listed image is not shipped
      images_inat.csv     asset_id, label, split, height, width, channels, rights_holder,
                          license_id
      images_inat/{asset_id}.jpg      integer ids; train / val / test (3,000); 21,600 in all
      video_ml.csv, video_ml/{asset_id}.mp4   (not read here)

Every CSV is read as text so hex ids such as ``1e5...`` never become floats; extra columns are
kept. A listed file that is absent is skipped, reported once as a warning and kept in
`SSW60.missing`; it never stops loading.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from songsight.errors import DataNotFoundError, SongsightError
from songsight.taxonomy import Species, load_species_csv

SUBDIR = "ssw60"
TAXA_CSV = "taxa.csv"
TAXA_COLUMNS = (
    "label", "species_code", "inat_taxon_id", "inat2021_label", "nabirds_labels",
    "common_name", "scientific_name", "family", "order",
)  # fmt: skip
MEDIA_REQUIRED_COLUMNS = ("asset_id", "label", "split")
AUDIO_COLUMNS = (
    "asset_id", "label", "split", "samplerate", "channels", "samples", "duration_seconds",
)  # fmt: skip
NABIRDS_COLUMNS = ("asset_id", "label", "split", "height", "width", "channels", "photographer")
INAT_COLUMNS = (
    "asset_id", "label", "split", "height", "width", "channels", "rights_holder", "license_id",
)  # fmt: skip

AUDIO_SAMPLE_RATE_HZ = 22_050
AUDIO_CLIP_S = 10.0
N_SPECIES = 60
# Rows listed per split in the published CSVs ("all" = every row), from the SSW60 README.
PUBLISHED_COUNTS: dict[str, dict[str, int]] = {
    "audio": {"train": 2_597, "test": 1_264, "all": 3_861},
    "nabirds": {"train": 5_050, "test": 5_171, "all": 10_221},
    "inat": {"test": 3_000, "all": 21_600},
}
IMAGE_SOURCES = ("nabirds", "inat")
_SHOW = 5


@dataclass(frozen=True)
class MediaSpec:
    """Where one SSW60 modality lives and how its CSV columns are typed."""

    name: str
    csv: str
    folder: str
    suffix: str
    columns: tuple[str, ...]
    int_columns: tuple[str, ...] = ()
    float_columns: tuple[str, ...] = ()


MEDIA: dict[str, MediaSpec] = {
    "audio": MediaSpec(
        "audio", "audio_ml.csv", "audio_ml", ".wav", AUDIO_COLUMNS,
        int_columns=("samplerate", "channels", "samples"), float_columns=("duration_seconds",),
    ),
    "nabirds": MediaSpec(
        "nabirds", "images_nabirds.csv", "images_nabirds", ".jpg", NABIRDS_COLUMNS,
        int_columns=("height", "width", "channels"),
    ),
    "inat": MediaSpec(
        "inat", "images_inat.csv", "images_inat", ".jpg", INAT_COLUMNS,
        int_columns=("height", "width", "channels", "license_id"),
    ),
}  # fmt: skip


def find_ssw60_root(root: str | Path) -> Path:
    """The folder holding ``taxa.csv``: ``root`` itself or ``root/ssw60`` (absolute)."""
    root = Path(root).expanduser().absolute()
    for candidate in (root, root / SUBDIR):
        if (candidate / TAXA_CSV).is_file():
            return candidate
    raise DataNotFoundError(
        f"no SSW60 dataset at {root}: expected {TAXA_CSV}, audio_ml.csv, images_nabirds.csv and "
        f"images_inat.csv there or in {root / SUBDIR}; download it with "
        f"`songsight data ssw60 {root}`"
    )


def _typed(column: pd.Series, kind: type) -> pd.Series:
    """Convert a text column to int/float when every cell parses; else keep it as text.

    Integers become nullable ``Int64`` so that NABirds + iNat tables concatenate without
    turning a column that only one of them has into floats.
    """
    try:
        values = [kind(v) for v in column.tolist()]
    except (TypeError, ValueError):
        return column
    return pd.Series(values, index=column.index, dtype="Int64" if kind is int else "float64")


def _read_media_csv(path: Path, spec: MediaSpec, labels: set[int]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataNotFoundError(f"{path}: not a readable CSV ({exc})") from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in MEDIA_REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataNotFoundError(
            f"{path}: missing column(s) {', '.join(missing)}; SSW60's {spec.csv} has "
            f"{', '.join(spec.columns)}"
        )
    df["asset_id"] = df["asset_id"].str.strip()
    df["split"] = df["split"].str.strip()
    empty = (df["asset_id"] == "").to_numpy()
    if empty.any():
        raise DataNotFoundError(
            f"{path}: empty asset_id on data row(s) {np.flatnonzero(empty)[:_SHOW].tolist()}"
        )
    try:
        df["label"] = [int(v) for v in df["label"].tolist()]
    except ValueError as exc:
        raise DataNotFoundError(f"{path}: column 'label' must hold integers ({exc})") from None
    unknown = sorted(set(df["label"].tolist()) - labels)
    if unknown:
        raise DataNotFoundError(
            f"{path}: label(s) {unknown[:_SHOW]} are not in {TAXA_CSV} (labels "
            f"{min(labels)}..{max(labels)})"
        )
    for column in spec.int_columns:
        if column in df.columns:
            df[column] = _typed(df[column], int)
    for column in spec.float_columns:
        if column in df.columns:
            df[column] = _typed(df[column], float)
    return df


def _as_splits(split: str | Iterable[str] | None) -> list[str] | None:
    if split is None:
        return None
    return [split] if isinstance(split, str) else list(split)


class SSW60:
    """An extracted SSW60 dataset: ``species`` and manifests of the files that are present.

    ``SSW60(root)`` reads ``taxa.csv`` and every media CSV there (a media CSV that is absent
    makes only that modality unavailable), checks which listed files exist, and warns once
    about the absent ones. Manifests follow `songsight.data.manifest`: ``path`` (absolute str),
    ``label`` (int), ``split``, then ``asset_id`` (str), ``source``, ``scientific_name``,
    ``common_name`` and the CSV's remaining columns.
    """

    def __init__(self, root: str | Path, *, warn_missing: bool = True):
        self.root = find_ssw60_root(root)
        self.species: list[Species] = load_species_csv(self.root / TAXA_CSV)
        labels = {s.label for s in self.species}
        self._tables: dict[str, pd.DataFrame | None] = {}
        self._missing: dict[str, list[str]] = {}
        self._listed: dict[str, dict[str, int]] = {}
        for name, spec in MEDIA.items():
            csv_path = self.root / spec.csv
            if not csv_path.is_file():
                self._tables[name] = None
                self._missing[name] = []
                continue
            listed = _read_media_csv(csv_path, spec, labels)
            self._listed[name] = {
                k: int(v) for k, v in sorted(listed["split"].value_counts().items())
            }
            self._tables[name], self._missing[name] = self._index(listed, spec)
        if warn_missing and self.missing:
            per = ", ".join(f"{MEDIA[k].folder}/: {len(v)}" for k, v in self._missing.items() if v)
            warnings.warn(
                f"SSW60 at {self.root}: {len(self.missing)} file(s) listed in the CSVs are absent "
                f"and skipped ({per}; e.g. {self.missing[0]}); the full list is SSW60.missing",
                stacklevel=2,
            )

    def _index(self, df: pd.DataFrame, spec: MediaSpec) -> tuple[pd.DataFrame, list[str]]:
        """Add path / source / species columns and drop rows whose file is absent."""
        folder = self.root / spec.folder
        # One directory listing instead of one stat per file (tens of thousands of files).
        shipped = set(os.listdir(folder)) if folder.is_dir() else set()
        names = df["asset_id"] + spec.suffix
        present = names.isin(shipped).to_numpy()
        missing = (spec.folder + "/" + names[~present]).tolist()
        by_label = {s.label: s for s in self.species}
        head = pd.DataFrame(
            {
                "path": (str(folder) + os.sep + names).tolist(),
                "label": df["label"].astype(np.int64),
                "split": df["split"],
                "asset_id": df["asset_id"],
                "source": spec.name,
                "scientific_name": [by_label[i].scientific_name for i in df["label"].tolist()],
                "common_name": [by_label[i].common_name for i in df["label"].tolist()],
            }
        )
        rest = df.drop(columns=[c for c in df.columns if c in head.columns])
        table = pd.concat([head, rest], axis=1).loc[present].reset_index(drop=True)
        return table, missing

    def _table(self, name: str) -> pd.DataFrame:
        table = self._tables[name]
        if table is None:
            raise DataNotFoundError(
                f"SSW60 at {self.root} has no {MEDIA[name].csv}; re-extract the archive "
                f"(`songsight data ssw60 {self.root.parent}`)"
            )
        return table

    def _select(self, table: pd.DataFrame, split: str | Iterable[str] | None, what: str):
        splits = _as_splits(split)
        if splits is None:
            return table.copy()
        have = sorted(set(table["split"].tolist()))
        unknown = [s for s in splits if s not in have]
        if unknown:
            raise DataNotFoundError(
                f"SSW60 {what} has no split {', '.join(map(repr, unknown))}; "
                f"splits: {', '.join(have)}"
            )
        return table.loc[table["split"].isin(splits)].reset_index(drop=True)

    def audio(self, split: str | Iterable[str] | None = None) -> pd.DataFrame:
        """Manifest of the audio clips present (``source`` = "audio"), optionally one split."""
        return self._select(self._table("audio"), split, "audio")

    def images(self, source: str = "all", split: str | Iterable[str] | None = None) -> pd.DataFrame:
        """Manifest of the images present: ``source`` "nabirds", "inat" or "all" (both, in that
        order; a split need only exist in one of them)."""
        if source == "all":
            tables = [self._table(s) for s in IMAGE_SOURCES]
            table = pd.concat(tables, ignore_index=True)
        elif source in IMAGE_SOURCES:
            table = self._table(source)
        else:
            raise ValueError(f"unknown image source {source!r}; choose nabirds, inat or all")
        return self._select(table, split, f"{source} images")

    @property
    def missing(self) -> list[str]:
        """Files listed in the CSVs but absent, relative to the root (``images_nabirds/x.jpg``)."""
        return [p for name in MEDIA for p in self._missing.get(name, [])]

    def splits(self, source: str) -> list[str]:
        """The split names of one modality ("audio", "nabirds" or "inat"), sorted."""
        return sorted(set(self._table(source)["split"].tolist()))

    def summary(self) -> dict:
        """Counts: ``{"root", "species", "audio" | "nabirds" | "inat": None when its CSV is
        absent, else {"listed": {split: n, "all": n}, "present": {...}, "missing": n}}``."""
        out: dict = {"root": str(self.root), "species": len(self.species)}
        for name in MEDIA:
            table = self._tables[name]
            if table is None:
                out[name] = None
                continue
            present = {k: int(v) for k, v in sorted(table["split"].value_counts().items())}
            listed = dict(self._listed[name])
            present["all"] = sum(present.values())
            listed["all"] = sum(listed.values())
            out[name] = {"listed": listed, "present": present, "missing": len(self._missing[name])}
        return out

    def __repr__(self) -> str:
        return f"SSW60({str(self.root)!r}, species={len(self.species)})"


def verify_ssw60(
    root: str | Path,
    *,
    expected_counts: Mapping[str, Mapping[str, int]] | None = PUBLISHED_COUNTS,
    max_missing: int = 1,
) -> dict:
    """Check an extracted SSW60: CSVs present, files present, row counts as published.

    ``expected_counts`` maps a modality ("audio", "nabirds", "inat") to rows per split ("all" =
    every row); None checks only that the CSVs and files agree (e.g. for a simulated SSW60).
    Up to ``max_missing`` absent files per modality are tolerated, and counts may differ by as
    much (the real archive lacks one NABirds JPG). Returns ``{"root", "ok", "problems": [str],
    "summary": SSW60.summary() or None, "missing": [relative paths]}``; never raises.
    """
    report: dict = {"root": str(root), "ok": False, "problems": [], "summary": None, "missing": []}
    problems = report["problems"]
    try:
        data = SSW60(root, warn_missing=False)
    except (SongsightError, OSError) as exc:
        problems.append(str(exc))
        return report
    summary = data.summary()
    report.update(root=summary["root"], summary=summary, missing=data.missing)
    if expected_counts is not None and summary["species"] != N_SPECIES:
        problems.append(f"taxa.csv lists {summary['species']} species, SSW60 has {N_SPECIES}")
    for name, spec in MEDIA.items():
        counts = summary[name]
        if counts is None:
            problems.append(f"{spec.csv} is missing")
            continue
        if counts["missing"] > max_missing:
            problems.append(
                f"{counts['missing']} of {counts['listed']['all']} files listed in {spec.csv} "
                f"are absent from {spec.folder}/"
            )
        for split, n in (expected_counts or {}).get(name, {}).items():
            listed = counts["listed"].get(split, 0)
            if abs(listed - n) > max_missing:
                what = "rows in all" if split == "all" else f"{split} rows"
                problems.append(f"{spec.csv} lists {listed} {what}; SSW60 has {n}")
    report["ok"] = not problems
    return report


def format_ssw60_report(report: Mapping) -> str:
    """A few lines for the terminal from a `verify_ssw60` report."""
    lines = [f"SSW60 at {report['root']}: {'OK' if report['ok'] else 'NOT OK'}"]
    summary = report.get("summary")
    if summary:
        lines.append(f"  species  {summary['species']}")
        for name in MEDIA:
            counts = summary[name]
            if counts is None:
                lines.append(f"  {name:<8} (no CSV)")
                continue
            splits = "  ".join(f"{k} {v:,}" for k, v in counts["present"].items() if k != "all")
            lines.append(f"  {name:<8} {splits}  (absent: {counts['missing']})")
    missing = list(report.get("missing") or [])
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        lines.append(f"  absent files: {shown}")
    lines += [f"  problem: {p}" for p in report["problems"]]
    return "\n".join(lines)


def load_ssw60(root: str | Path, *, warn_missing: bool = True) -> SSW60:
    """Open an extracted SSW60 folder (the folder itself or its parent); see `SSW60`."""
    return SSW60(root, warn_missing=warn_missing)
