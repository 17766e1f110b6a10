"""Species records, their ``taxa.csv``, and the prompt strings BioCLIP builds from them.

Prompt formats follow BioCLIP's evaluations (`sci`, `com`, `taxon`, `sci_com`, `taxon_com`), e.g.
``taxon_com`` = "Animalia Chordata Aves Anseriformes Anatidae Branta canadensis with common name Canada Goose".
The templates a prompt goes through (named sets, the user's own strings or files) are
`songsight.prompt_templates`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from songsight.errors import DataNotFoundError
from songsight.prompt_templates import PROMPT_FORMATS, Templates, resolve_templates

TAXA_COLUMNS = ("label", "common_name", "scientific_name", "family", "order")


@dataclass(frozen=True)
class Species:
    """One species with its taxonomy. ``label`` is the integer class id used in manifests."""

    label: int
    scientific_name: str
    common_name: str
    kingdom: str = "Animalia"
    phylum: str = "Chordata"
    class_: str = "Aves"
    order: str = ""
    family: str = ""
    genus: str = ""
    code: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def epithet(self) -> str:
        parts = self.scientific_name.split()
        return parts[1] if len(parts) > 1 else ""

    @property
    def genus_name(self) -> str:
        """The genus column, else the scientific name's first word ("" without either)."""
        return self.genus or (self.scientific_name.split() or [""])[0]

    def taxon_ranks(self) -> list[str]:
        """Kingdom..genus plus epithet, skipping unknown ranks."""
        ranks = [
            self.kingdom,
            self.phylum,
            self.class_,
            self.order,
            self.family,
            self.genus_name,
            self.epithet,
        ]
        return [r for r in ranks if r]

    def prompt(self, fmt: str = "taxon_com") -> str:
        """The species string in one of BioCLIP's formats (see `PROMPT_FORMATS`)."""
        if fmt == "sci":
            return self.scientific_name
        if fmt == "com":
            return self.common_name
        if fmt == "taxon":
            return " ".join(self.taxon_ranks())
        if fmt == "sci_com":
            return f"{self.scientific_name} with common name {self.common_name}"
        if fmt == "taxon_com":
            return f"{' '.join(self.taxon_ranks())} with common name {self.common_name}"
        raise ValueError(
            f"unknown prompt format {fmt!r}; choose one of {', '.join(PROMPT_FORMATS)}"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def build_prompts(
    species: Sequence[Species],
    fmt: str = "taxon_com",
    templates: str | Sequence[str] | Templates = "none",
) -> list[list[str]]:
    """For each species, its prompt through every template: (S, T) nested list.

    ``templates``: anything `resolve_templates` takes; ``{}`` stands for the species in ``fmt``.
    """
    tmpl = resolve_templates(templates)
    return [tmpl.fill(sp, fmt) for sp in species]


_PAREN = re.compile(r"\s*\(.*?\)\s*")


def _clean_rank(value: str) -> str:
    """SSW60's `family` reads "Anatidae (Ducks, Geese, and Waterfowl)": keep the Latin name only."""
    return _PAREN.sub(" ", value or "").strip()


def species_from_row(row: dict) -> Species:
    """One SSW60 ``taxa.csv`` row -> Species. Extra columns are kept in ``extra``."""
    sci = row["scientific_name"].strip()
    known = {
        "label",
        "species_code",
        "common_name",
        "scientific_name",
        "family",
        "order",
        "kingdom",
        "phylum",
        "class",
        "genus",
    }
    return Species(
        label=int(row["label"]),
        scientific_name=sci,
        common_name=row["common_name"].strip(),
        kingdom=_clean_rank(row.get("kingdom") or "Animalia"),
        phylum=_clean_rank(row.get("phylum") or "Chordata"),
        class_=_clean_rank(row.get("class") or "Aves"),
        order=_clean_rank(row.get("order", "")),
        family=_clean_rank(row.get("family", "")),
        genus=_clean_rank(row.get("genus") or (sci.split() or [""])[0]),
        code=(row.get("species_code") or "").strip(),
        extra={k: v for k, v in row.items() if k not in known},
    )


def _checked_row(path: Path, line: int, row: dict) -> Species:
    """`species_from_row`, or one clear `DataNotFoundError` naming the file and line."""
    if None in row.values():
        raise DataNotFoundError(f"{path}, line {line}: fewer fields than the header names")
    try:
        int(row["label"])
    except ValueError:
        raise DataNotFoundError(
            f"{path}, line {line}: label {row['label']!r} is not an integer"
        ) from None
    return species_from_row(row)


def load_species_csv(path: str | Path) -> list[Species]:
    """Read a species table with SSW60's ``taxa.csv`` columns, sorted by label."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(
            f"species table not found: {path} (expected SSW60's taxa.csv columns: {', '.join(TAXA_COLUMNS)})"
        )
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in TAXA_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataNotFoundError(
                f"{path}: missing column(s) {', '.join(missing)}; a species table needs {', '.join(TAXA_COLUMNS)}"
            )
        try:
            species = [_checked_row(path, line, r) for line, r in enumerate(reader, start=2)]
        except UnicodeDecodeError:
            raise DataNotFoundError(f"{path}: not a UTF-8 text file") from None
    labels = [s.label for s in species]
    if len(set(labels)) != len(labels):
        raise DataNotFoundError(f"{path}: duplicate labels in species table")
    return sorted(species, key=lambda s: s.label)


def write_species_csv(species: list[Species], path: str | Path) -> None:
    """Write species in SSW60's ``taxa.csv`` layout (family/order without descriptions, plus genus)."""
    cols = [
        "label",
        "species_code",
        "inat_taxon_id",
        "inat2021_label",
        "nabirds_labels",
        "common_name",
        "scientific_name",
        "family",
        "order",
        "genus",
    ]
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for s in species:
            w.writerow(
                {
                    "label": s.label,
                    "species_code": s.code,
                    "inat_taxon_id": s.extra.get("inat_taxon_id", ""),
                    "inat2021_label": s.extra.get("inat2021_label", ""),
                    "nabirds_labels": s.extra.get("nabirds_labels", ""),
                    "common_name": s.common_name,
                    "scientific_name": s.scientific_name,
                    "family": s.family,
                    "order": s.order,
                    "genus": s.genus,
                }
            )
