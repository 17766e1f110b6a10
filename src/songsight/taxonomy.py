"""Species records, the tables they come from, and the prompt strings BioCLIP builds from them.

Prompt formats follow BioCLIP's evaluations (`sci`, `com`, `taxon`, `sci_com`, `taxon_com`), e.g.
``taxon_com`` = "Animalia Chordata Aves Anseriformes Anatidae Branta canadensis with common name Canada Goose".
The templates a prompt goes through (named sets, the user's own strings or files) are
`songsight.prompt_templates`.

The forgiving table reader (`read_table`, `normalise_columns`, `COLUMN_ALIASES`) lives here, below
`songsight.data`, so that species tables and manifests (`songsight.data.manifest`) are read by
one piece of code: CSV or Parquet, a BOM and any line ends tolerated, the separator sniffed,
column names as people write them.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

from songsight.errors import DataNotFoundError
from songsight.prompt_templates import PROMPT_FORMATS, Templates, resolve_templates

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("songsight.taxonomy")

# A species table needs these; `SPECIES_OPTIONAL` are read when present.
SPECIES_REQUIRED = ("scientific_name", "common_name")
SPECIES_OPTIONAL = ("label", "species_code", "kingdom", "phylum", "class", "order", "family", "genus")  # fmt: skip
# Ranks a bird-first tool may assume, but only for a table without the column.
_DEFAULT_RANKS = {"kingdom": "Animalia", "phylum": "Chordata", "class": "Aves"}


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


# ---- the tables people write: CSV or Parquet, columns as they name them -------------------------

# What people call the columns -> songsight's name (compared after `column_key`). An alias is
# used only by a table that does not read the name itself: ``class`` is a manifest's label but
# a species table's rank; ``species`` names a manifest's species, a species table's Latin name.
COLUMN_ALIASES = {
    "file": "path", "filepath": "path", "file_path": "path", "filename": "path",
    "file_name": "path", "class": "label", "class_id": "label", "label_id": "label",
    "species_id": "label", "species": "scientific_name", "sci_name": "scientific_name",
    "latin_name": "scientific_name", "common": "common_name", "english_name": "common_name",
    "vernacular_name": "common_name", "code": "species_code", "ebird_code": "species_code",
    "start": "start_s", "start_time": "start_s", "begin_time": "start_s", "end": "end_s",
    "end_time": "end_s",
}  # fmt: skip
TABLE_SUFFIXES = {"csv": (".csv", ".csv.gz"), "parquet": (".parquet", ".pq")}
# Tried in this order; a tie between a comma and another separator goes to the comma.
_SEPARATORS = (",", ";", "\t")
_SNIFF_ROWS = 50


def table_format(path: Path, what: str = "manifest") -> str:
    """``"csv"`` or ``"parquet"``, by suffix; ``what`` names the table in the error."""
    name = path.name.lower()
    for fmt, suffixes in TABLE_SUFFIXES.items():
        if name.endswith(suffixes):
            return fmt
    known = ", ".join(s for suffixes in TABLE_SUFFIXES.values() for s in suffixes)
    raise DataNotFoundError(f"{path}: unsupported {what} format; use one of {known}")


def _open_text(path: Path):
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    return opener(path, "rt", encoding="utf-8-sig", newline="")


def _shown(sep: str) -> str:
    return "tab" if sep == "\t" else repr(sep)


def sniff_separator(path: Path) -> str:
    """The CSV's separator: ``,``, ``;`` or tab, from the header and the first rows.

    A separator fits when it splits the header in several columns and no row in more; the one
    whose rows all match the header, then the one with most columns, wins. Raises
    `DataNotFoundError` naming the separator when the header reads as one column holding ``;``
    or a tab and no separator (or several alike) fits.
    """
    fits, header = [], {}
    for sep in _SEPARATORS:
        try:
            with _open_text(path) as fh:
                rows = [r for r in islice(csv.reader(fh, delimiter=sep), _SNIFF_ROWS) if r]
        except csv.Error:
            continue
        except UnicodeDecodeError:
            raise DataNotFoundError(f"{path}: not a UTF-8 text file") from None
        header[sep] = rows[0] if rows else []
        n = len(header[sep])
        if n > 1 and all(len(r) <= n for r in rows[1:]):
            fits.append((all(len(r) == n for r in rows[1:]), n, sep == ",", sep))
    fits.sort(reverse=True)
    if fits and (len(fits) == 1 or fits[0][:2] != fits[1][:2] or fits[0][2]):
        return fits[0][3]
    first = header.get(",", [])
    held = [s for s in _SEPARATORS[1:] if len(first) == 1 and s in first[0]]
    if not held:
        return ","
    alike = [f[3] for f in fits if f[:2] == fits[0][:2]] if fits else []
    why = (
        f"{' and '.join(map(_shown, alike))} each split every row alike"
        if alike
        else f"the rows do not split by {' or '.join(map(_shown, held))} as the header does"
    )
    raise DataNotFoundError(
        f"{path}: cannot tell the separator: the header is one column {first[0]!r} holding "
        f"{' and '.join(map(_shown, held))}, and {why}; use one separator (',', ';' or tab) "
        "and as many fields on every row as in the header"
    )


def _unique(names: list[str]) -> list[str]:
    """Repeated column names made unique as pandas does (``a``, ``a.1``)."""
    seen: Counter = Counter()
    out = []
    for n in names:
        out.append(f"{n}.{seen[n]}" if seen[n] else n)
        seen[n] += 1
    return out


def read_table(path: str | Path, what: str = "manifest", *, strict: bool = False) -> pd.DataFrame:
    """A CSV (every cell as text, an empty one ``""``) or Parquet table, as a DataFrame.

    CSV: UTF-8 with or without a BOM, any line ends, separated by ``,``, ``;`` or tab (see
    `sniff_separator`). A row with more fields than the header is refused (naming its line); a
    shorter one is padded with ``""``, or refused where ``strict``. ``what`` names the table.
    """
    import pandas as pd

    path = Path(path).expanduser()
    fmt = table_format(path, what)
    if not path.is_file():
        raise DataNotFoundError(f"{what} not found: {path}")
    if fmt == "parquet":
        return pd.read_parquet(path)
    sep = sniff_separator(path)
    header: list[str] = []
    rows: list[list[str]] = []
    try:
        with _open_text(path) as fh:
            reader = csv.reader(fh, delimiter=sep)
            for fields in reader:
                if not fields:
                    continue
                if not header:
                    header = fields
                elif len(fields) > len(header) or (strict and len(fields) < len(header)):
                    raise DataNotFoundError(
                        f"{path}, line {reader.line_num}: {len(fields)} fields where the header "
                        f"names {len(header)} ({_shown(sep)}-separated)"
                    )
                else:
                    rows.append(fields + [""] * (len(header) - len(fields)))
    except UnicodeDecodeError:
        raise DataNotFoundError(f"{path}: not a UTF-8 text file") from None
    except csv.Error as err:
        raise DataNotFoundError(f"{path}, line {reader.line_num}: {err}") from None
    return pd.DataFrame(rows, columns=_unique(header), dtype=str)


def column_key(column: object) -> str:
    """How a column name is compared: trimmed, lower case, spaces and hyphens as ``_``."""
    return "_".join(str(column).strip().lower().replace("-", " ").split())


def normalise_columns(
    df: pd.DataFrame, name: str, known: Sequence[str], aliases: Mapping[str, str] | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Rename ``df``'s columns to the ``known`` ones they mean; returns (df, unknown columns).

    A name ``known`` holds is itself; otherwise an alias to a ``known`` name stands for it.
    Raises `DataNotFoundError` for a column that is almost a known name or alias (a typo would
    otherwise lose that column without a word) or two columns that mean the same.
    """
    aliases = COLUMN_ALIASES if aliases is None else aliases
    usable = [a for a, target in aliases.items() if target in known]
    renamed, unknown = {}, []
    for column in df.columns:
        own = column_key(column)
        key = own if own in known else aliases.get(own, own)
        if key in known:
            renamed[column] = key
            continue
        close = [] if own in aliases else difflib.get_close_matches(own, [*known, *usable], 1, 0.8)
        if close:
            meant = aliases.get(close[0], close[0]) if close[0] not in known else close[0]
            raise DataNotFoundError(
                f"{name}: column {str(column)!r} is not one songsight reads; did you mean "
                f"{meant!r}? Known columns: {', '.join(known)}"
            )
        unknown.append(str(column))
    targets = list(renamed.values())
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raise DataNotFoundError(
            f"{name}: several columns mean {', '.join(twice)} "
            f"({', '.join(str(c) for c, t in renamed.items() if t in twice)}); keep one"
        )
    return df.rename(columns=renamed), unknown


# ---- species tables ----------------------------------------------------------------------------

_PAREN = re.compile(r"\s*\(.*?\)\s*")


def _clean_rank(value: str) -> str:
    """SSW60's `family` reads "Anatidae (Ducks, Geese, and Waterfowl)": keep the Latin name only."""
    return _PAREN.sub(" ", value or "").strip()


def species_from_row(row: dict) -> Species:
    """One species-table row (names as `normalise_columns` gives them, e.g. SSW60's ``taxa.csv``)
    -> Species. ``label`` and the names are needed; kingdom, phylum and class default to
    Animalia, Chordata and Aves only where the row has no such key. Extra columns go to ``extra``.
    """
    sci = row["scientific_name"].strip()
    ranks = {k: _clean_rank(row.get(k, default)) for k, default in _DEFAULT_RANKS.items()}
    return Species(
        label=int(row["label"]),
        scientific_name=sci,
        common_name=row["common_name"].strip(),
        kingdom=ranks["kingdom"],
        phylum=ranks["phylum"],
        class_=ranks["class"],
        order=_clean_rank(row.get("order", "")),
        family=_clean_rank(row.get("family", "")),
        genus=_clean_rank(row.get("genus") or (sci.split() or [""])[0]),
        code=(row.get("species_code") or "").strip(),
        extra={k: v for k, v in row.items() if k not in (*SPECIES_REQUIRED, *SPECIES_OPTIONAL)},
    )


def _blank(value: object) -> bool:
    """None, NaN or NA: a Parquet table's empty cell (a CSV's is ``""``)."""
    import pandas as pd

    return not isinstance(value, str) and pd.api.types.is_scalar(value) and bool(pd.isna(value))


def _integer(value: object) -> int | None:
    """An integer label from text (``" 3 "``) or a Parquet number (``3``, ``3.0``), else None."""
    if isinstance(value, bool) or _blank(value):
        return None
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number == int(number) else None


def _labels(df: pd.DataFrame, name: str) -> list[int]:
    """The label column as unique ints, or 0..N-1 in row order when the table has none."""
    if "label" not in df.columns:
        log.debug("%s: no label column; species numbered 0..%d in row order", name, len(df) - 1)
        return list(range(len(df)))
    cells = df["label"].tolist()
    labels = [_integer(v) for v in cells]
    bad = [f"row {i}: {v!r}" for i, v in enumerate(cells) if labels[i] is None]
    if bad:
        raise DataNotFoundError(
            f"{name}: column 'label' must hold integers (or leave it out to number the species "
            f"0..N-1 in row order); {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else "")
        )
    twice = sorted(n for n, count in Counter(labels).items() if count > 1)
    if twice:
        raise DataNotFoundError(
            f"{name}: duplicate labels in species table: {', '.join(map(str, twice[:5]))}; "
            "labels must be unique"
        )
    return [n for n in labels if n is not None]


def load_species_csv(path: str | Path) -> list[Species]:
    """Read a species table (CSV or Parquet, read as manifests are), sorted by label.

    Needs a scientific and a common name under any name `normalise_columns` knows
    (``Scientific Name``, ``latin_name``, ``species``, ``Common name`` ...); `SPECIES_OPTIONAL`
    columns are read when present: without ``label`` the species are numbered 0..N-1 in row
    order, with it the labels are unique integers. SSW60's ``taxa.csv`` reads as it is; other
    columns are kept in each `Species.extra` (and listed in an INFO log line).
    """
    path = Path(path).expanduser()
    name = str(path)
    table = read_table(path, "species table", strict=True)
    df, unused = normalise_columns(table, name, (*SPECIES_REQUIRED, *SPECIES_OPTIONAL))
    missing = [c for c in SPECIES_REQUIRED if c not in df.columns]
    if missing:
        raise DataNotFoundError(
            f"{name}: missing column(s) {', '.join(missing)}; a species table needs "
            f"{', '.join(SPECIES_REQUIRED)} (optional: {', '.join(SPECIES_OPTIONAL)}); found "
            f"{', '.join(map(str, table.columns)) or 'no columns'}"
        )
    if unused:
        log.info("%s: columns kept in Species.extra, not read: %s", name, ", ".join(unused))
    labels = _labels(df, name)
    species = []
    for label, record in zip(labels, df.to_dict("records"), strict=True):
        row = {k: v if k in unused else ("" if _blank(v) else str(v)) for k, v in record.items()}
        species.append(species_from_row({**row, "label": label}))
    return sorted(species, key=lambda s: s.label)


def write_species_csv(species: list[Species], path: str | Path) -> None:
    """Write species in SSW60's ``taxa.csv`` layout (family/order without descriptions), plus
    kingdom, phylum, class and genus: `load_species_csv` reads back the species written."""
    cols = ["label", "species_code", "inat_taxon_id", "inat2021_label", "nabirds_labels",
            "common_name", "scientific_name", "kingdom", "phylum", "class", "family", "order",
            "genus"]  # fmt: skip
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
                    "kingdom": s.kingdom,
                    "phylum": s.phylum,
                    "class": s.class_,
                    "family": s.family,
                    "order": s.order,
                    "genus": s.genus,
                }
            )
