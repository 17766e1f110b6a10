"""Species records and the prompt strings BioCLIP builds from them.

Prompt formats follow BioCLIP's evaluations (`sci`, `com`, `taxon`, `sci_com`, `taxon_com`), e.g.
``taxon_com`` = "Animalia Chordata Aves Anseriformes Anatidae Branta canadensis with common name Canada Goose".
"""

from __future__ import annotations

import csv
import re
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from songsight.errors import DataNotFoundError, SongsightError

PROMPT_FORMATS = ("taxon_com", "taxon", "sci", "com", "sci_com")

# The 80 OpenAI ImageNet templates are long; BioCLIP's zero-shot classifier uses them for
# images. "none" is the bare string, the form BioCLIP-2's TreeOfLife captions mostly take.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "none": ("{}",),
    "photo": ("a photo of {}.",),
    "openai": (
        "a bad photo of a {}.",
        "a photo of many {}.",
        "a sculpture of a {}.",
        "a photo of the hard to see {}.",
        "a low resolution photo of the {}.",
        "a rendering of a {}.",
        "graffiti of a {}.",
        "a bad photo of the {}.",
        "a cropped photo of the {}.",
        "a tattoo of a {}.",
        "the embroidered {}.",
        "a photo of a hard to see {}.",
        "a bright photo of a {}.",
        "a photo of a clean {}.",
        "a photo of a dirty {}.",
        "a dark photo of the {}.",
        "a drawing of a {}.",
        "a photo of my {}.",
        "the plastic {}.",
        "a photo of the cool {}.",
        "a close-up photo of a {}.",
        "a black and white photo of the {}.",
        "a painting of the {}.",
        "a painting of a {}.",
        "a pixelated photo of the {}.",
        "a sculpture of the {}.",
        "a bright photo of the {}.",
        "a cropped photo of a {}.",
        "a plastic {}.",
        "a photo of the dirty {}.",
        "a jpeg corrupted photo of a {}.",
        "a blurry photo of the {}.",
        "a photo of the {}.",
        "a good photo of the {}.",
        "a rendering of the {}.",
        "a {} in a video game.",
        "a photo of one {}.",
        "a doodle of a {}.",
        "a close-up photo of the {}.",
        "a photo of a {}.",
        "the origami {}.",
        "the {} in a video game.",
        "a sketch of a {}.",
        "a doodle of the {}.",
        "a origami {}.",
        "a low resolution photo of a {}.",
        "the toy {}.",
        "a rendition of the {}.",
        "a photo of the clean {}.",
        "a photo of a large {}.",
        "a rendition of a {}.",
        "a photo of a nice {}.",
        "a photo of a weird {}.",
        "a blurry photo of a {}.",
        "a cartoon {}.",
        "art of a {}.",
        "a sketch of the {}.",
        "a embroidered {}.",
        "a pixelated photo of a {}.",
        "itap of the {}.",
        "a jpeg corrupted photo of the {}.",
        "a good photo of a {}.",
        "a plushie {}.",
        "a photo of the nice {}.",
        "a photo of the small {}.",
        "a photo of the weird {}.",
        "the cartoon {}.",
        "art of the {}.",
        "a drawing of the {}.",
        "a photo of the large {}.",
        "a black and white photo of a {}.",
        "the plushie {}.",
        "a dark photo of a {}.",
        "itap of a {}.",
        "graffiti of the {}.",
        "a toy {}.",
        "itap of my {}.",
        "a photo of a cool {}.",
        "a photo of a small {}.",
        "a tattoo of the {}.",
    ),
    # BioLingual's AnimalSpeak captions describe sounds; these are for its text tower.
    "sound": ("{}", "the sound of {}", "a recording of {} singing", "{} calling"),
}

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


# --- templates the user owns: a set name, a template string with named fields, or a file ----

TEMPLATE_FIELDS = {
    "common": "common name (Canada Goose)",
    "common_lower": "common name in lower case (canada goose)",
    "article": "'a' or 'an', to go before the lower-case common name",
    "scientific": "scientific name (Branta canadensis)",
    "genus": "genus (Branta)",
    "epithet": "species epithet (canadensis)",
    "family": "family (Anatidae)",
    "order": "order (Anseriformes)",
    "class": "class (Aves)",
    "phylum": "phylum (Chordata)",
    "kingdom": "kingdom (Animalia)",
    "code": "species code (cangoo)",
    "label": "integer label",
    "prompt": "the species in the chosen --prompt-format; also written {}",
    **{fmt: f"the {fmt} prompt format" for fmt in PROMPT_FORMATS},
}


def template_fields(sp: Species, fmt: str) -> dict[str, str]:
    """The named fields a template can use for ``sp`` (`TEMPLATE_FIELDS`)."""
    lower = sp.common_name.lower()
    values = {
        "common": sp.common_name, "common_lower": lower,
        "article": "an" if lower[:1] in tuple("aeiou") else "a",
        "scientific": sp.scientific_name, "genus": sp.genus_name,
        "epithet": sp.epithet, "family": sp.family, "order": sp.order, "class": sp.class_,
        "phylum": sp.phylum, "kingdom": sp.kingdom, "code": sp.code, "label": str(sp.label),
        "prompt": sp.prompt(fmt),
    }  # fmt: skip
    return values | {f: sp.prompt(f) for f in PROMPT_FORMATS}


@dataclass(frozen=True)
class Templates:
    """Resolved templates: ``spec`` as the user gave it, ``templates`` the strings it names."""

    spec: str
    templates: tuple[str, ...]

    def provenance(self) -> dict:
        return {"spec": self.spec, "templates": list(self.templates)}

    def fill(self, sp: Species, fmt: str) -> list[str]:
        """``sp``'s prompt through every template."""
        fields = template_fields(sp, fmt)
        return [t.format(*[fields["prompt"]] * _positional(t), **fields) for t in self.templates]


def _positional(template: str) -> int:
    return sum(1 for _, name, _, _ in string.Formatter().parse(template) if name in ("", "0"))


def _check_template(template: str, where: str) -> str:
    """``template`` when it formats with the known fields and uses at least one."""
    try:
        names = [n for _, n, _, _ in string.Formatter().parse(template) if n is not None]
        unknown = sorted(set(names) - {"", "0", *TEMPLATE_FIELDS})
        if not unknown and names:
            template.format(*["x"] * _positional(template), **dict.fromkeys(TEMPLATE_FIELDS, "x"))
    except (ValueError, IndexError, KeyError, AttributeError) as exc:
        raise SongsightError(f"{where}: {template!r} is not a valid template ({exc})") from None
    if unknown:
        raise SongsightError(
            f"{where}: unknown field(s) {', '.join('{' + n + '}' for n in unknown)} in {template!r}; "
            f"fields: {', '.join('{' + n + '}' for n in TEMPLATE_FIELDS)}"
        )
    if not names:
        raise SongsightError(
            f"{where}: {template!r} has no field such as {{common}}, so every species would get "
            "the same text"
        )
    return template


def resolve_templates(spec: str | Sequence[str] | Templates) -> Templates:
    """A template set name (`TEMPLATE_SETS`), one template string with fields (`TEMPLATE_FIELDS`,
    e.g. ``"the sound of {article} {common_lower}"``), a UTF-8 file of templates (one a line;
    blank lines and ``#`` comments skipped), or a sequence of template strings.
    `SongsightError` (one line) for anything else."""
    if isinstance(spec, Templates):
        return spec
    if not isinstance(spec, str):
        items = tuple(_check_template(t, "template") for t in spec)
        if not items:
            raise SongsightError("an empty list of templates")
        return Templates(f"{len(items)} template(s)", items)
    if spec in TEMPLATE_SETS:
        return Templates(spec, TEMPLATE_SETS[spec])
    path = Path(spec).expanduser()
    if "{" not in spec and path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SongsightError(f"cannot read templates file {path}: {exc}") from None
        items = tuple(
            _check_template(text.strip(), f"{path}, line {n}")
            for n, text in enumerate(lines, start=1)
            if text.strip() and not text.lstrip().startswith("#")
        )
        if not items:
            raise SongsightError(f"templates file {path} holds no template")
        return Templates(spec, items)
    if "{" in spec:
        return Templates(spec, (_check_template(spec, "template"),))
    raise SongsightError(
        f"unknown template set {spec!r}: not one of {', '.join(TEMPLATE_SETS)}, nor a template "
        "string with a field such as {common}, nor a file of templates"
    )


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
