"""Prompt templates: the forms a species' name takes (`PROMPT_FORMATS`), the named template sets
(`TEMPLATE_SETS`), and the user's own templates (a string with named fields, or a file),
checked and filled for a species.

`songsight.taxonomy.build_prompts` puts each species through them.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from songsight.errors import SongsightError

if TYPE_CHECKING:
    from songsight.taxonomy import Species

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
