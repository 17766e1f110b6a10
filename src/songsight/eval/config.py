"""What an evaluation run does (`EvalConfig`) and the checks of a distilled checkpoint against it.

The config is recorded in RESULTS.json with its defaults resolved (prompt forms, cascade
temperature), so a results file says exactly what produced it.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from songsight.encoders.loading import BIOCLIP2_ID, BIOLINGUAL_ID
from songsight.errors import SongsightError
from songsight.eval.audio_to_image import ALWAYS, DISTILLED_METHODS, RETRIEVAL_METHODS
from songsight.prompt_templates import PROMPT_FORMATS, TEMPLATE_SETS, resolve_templates
from songsight.taxonomy import Species

FORMAT_VERSION = 1
TASKS = ("retrieval", "discriminability", "alignment")
GALLERIES = ("all", "nabirds", "inat")
DATA_FIELDS = ("ssw60", "audio", "photos", "species")
USER_DATA_FLAGS = {"audio": "--audio MANIFEST", "photos": "--photos MANIFEST", "species": "--species TAXA_CSV"}  # fmt: skip


def check_data_source(
    ssw60: str | None, audio: str | None, photos: str | None, species: str | None
) -> None:
    """Exactly one source of data: SSW60, or all three of a user's audio, photos and species."""
    given = {"audio": audio, "photos": photos, "species": species}
    mine = [USER_DATA_FLAGS[k].split()[0] for k, v in given.items() if v]
    if ssw60 and mine:
        raise SongsightError(
            f"--ssw60 and {'/'.join(mine)} are two ways to give the data: give --ssw60 ROOT, or "
            "--audio, --photos and --species, not both"
        )
    lacking = [flag for k, flag in USER_DATA_FLAGS.items() if not given[k]]
    if not ssw60 and not mine:
        raise SongsightError(
            "say what to evaluate: --ssw60 ROOT, or your own recordings and photos with "
            "--audio MANIFEST --photos MANIFEST --species TAXA_CSV"
        )
    if not ssw60 and lacking:
        raise SongsightError(
            f"{' and '.join(mine)} also need{'s' if len(mine) == 1 else ''} "
            f"{' and '.join(lacking)}: your own data is --audio, --photos and --species together "
            "(or --ssw60 ROOT alone)"
        )


@dataclass
class EvalConfig:
    """Everything that determines an evaluation run; recorded in RESULTS.json.

    ``prompt_format`` / ``templates`` build the image model's species embeddings (cascade,
    mappings' targets, oracle, distilled zero-shot); None takes the distilled checkpoint's
    own (``meta["prompts"]``), else ``taxon_com`` / ``none``. ``audio_prompt_format`` /
    ``audio_templates`` build BioLingual's species embeddings (``com`` through the ``sound``
    templates, the AnimalSpeak caption style). Templates are anything
    `songsight.prompt_templates.resolve_templates` takes (a set name, a template string with fields,
    a file); ``audio_templates`` may list several candidates, and the one with the best
    zero-shot top-1 on the train split is used. Mappings are fitted on every species' prompt in
    each of ``mapping_formats`` through ``audio_templates``, each paired with its image-model
    species embedding. ``cascade_temperature`` None uses BioLingual's learned logit scale.

    The data is ``ssw60`` (an extracted SSW60) or ``audio`` + ``photos`` + ``species`` (a
    user's audio and photo manifests and species table; `songsight.eval.datasets`), not both.
    """

    ssw60: str | None = None
    out: str = "RESULTS.json"
    audio: str | None = None
    photos: str | None = None
    species: str | None = None
    audio_model: str = BIOLINGUAL_ID
    image_model: str = BIOCLIP2_ID
    distilled: str | None = None
    methods: list[str] | None = None
    tasks: list[str] | None = None
    save_embeddings: str | None = None
    soundscapes: str | None = None
    focal: str | None = None
    gallery: str = "all"
    prompt_format: str | None = None
    templates: str | list[str] | None = None
    audio_prompt_format: str = "com"
    audio_templates: str | list[str] = "sound"
    mapping_formats: list[str] = field(default_factory=lambda: list(PROMPT_FORMATS))
    cascade_temperature: float | None = None
    ridge_alpha: float = 1.0
    mlp_hidden: int = 1024
    mlp_epochs: int = 200
    knn_k: int = 5
    bootstrap: int = 1000
    seed: int = 0
    device: str = "auto"
    batch_size: int = 16
    precision: str = "auto"
    runtime: str = "auto"  # the audio and image towers: ONNX Runtime on a CPU when it can
    preprocess: str = "model"
    limit_queries: int | None = None
    limit_train: int | None = None
    soundscape_window_s: float | None = None
    soundscape_hop_s: float | None = None
    figures: bool = True
    n_examples: int = 4
    progress: bool = True

    def __post_init__(self) -> None:
        for name in DATA_FIELDS + ("out", "distilled", "save_embeddings", "soundscapes", "focal"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, str(value))
        check_data_source(self.ssw60, self.audio, self.photos, self.species)
        if not self.ssw60 and self.gallery != "all":
            raise SongsightError(
                f"--gallery {self.gallery} picks one of SSW60's image sources; with --photos the "
                "gallery is the photo manifest's (its 'source' column, where given, is scored "
                "part by part)"
            )
        if self.gallery not in GALLERIES:
            raise SongsightError(
                f"gallery must be one of {', '.join(GALLERIES)}, not {self.gallery!r}"
            )
        for fmt in [self.prompt_format, self.audio_prompt_format, *self.mapping_formats]:
            if fmt is not None and fmt not in PROMPT_FORMATS:
                raise SongsightError(
                    f"unknown prompt format {fmt!r}; choose from {', '.join(PROMPT_FORMATS)}"
                )
        if isinstance(self.audio_templates, (list, tuple)):
            if not self.audio_templates:
                raise SongsightError("audio_templates needs at least one candidate")
            # One candidate is simply the templates to use.
            tmpl = list(self.audio_templates)
            self.audio_templates = tmpl if len(tmpl) > 1 else tmpl[0]
        for spec in [self.templates, *self.audio_candidates]:
            if spec is not None:
                resolve_templates(spec)  # a clear one-line error now, not after the embedding
        unknown = [m for m in self.methods or [] if m not in RETRIEVAL_METHODS and m != "original"]
        if unknown:
            raise SongsightError(
                f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(RETRIEVAL_METHODS)}"
            )
        needs = [m for m in self.methods or [] if m in DISTILLED_METHODS]
        if needs and not self.distilled:
            raise SongsightError(f"method '{needs[0]}' needs a checkpoint: pass --distilled DIR")
        unknown = [t for t in self.tasks or [] if t not in TASKS]
        if unknown:
            raise SongsightError(
                f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}"
            )
        if self.bootstrap < 0 or self.batch_size < 1 or self.knn_k < 1:
            raise SongsightError("need bootstrap >= 0, batch_size >= 1 and knn_k >= 1")
        for name in ("limit_queries", "limit_train"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SongsightError(f"{name} must be >= 1")
        if self.cascade_temperature is not None and not self.cascade_temperature > 0:
            raise SongsightError(f"cascade_temperature must be > 0, got {self.cascade_temperature}")

    @property
    def audio_candidates(self) -> list[str]:
        """``audio_templates`` as a list: several are candidates chosen between on the train
        split (`songsight.eval.inputs.choose_templates`), one is used as it is."""
        tmpl = self.audio_templates
        return list(tmpl) if isinstance(tmpl, list) else [tmpl]

    def prompts_provenance(self) -> dict:
        """Each model's prompt format and the template strings its species text came from."""
        return {
            "image_model": {
                "prompt_format": self.prompt_format,
                **resolve_templates(self.templates or "none").provenance(),
            },
            "audio_model": {
                "prompt_format": self.audio_prompt_format,
                **resolve_templates(self.audio_templates).provenance(),
            },
        }

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EvalConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# --- a distilled checkpoint against the run --------------------------------------------------


def checkpoint_prompts(meta: dict | None) -> tuple[str | None, str | list[str] | None]:
    """(prompt format, templates) a distilled checkpoint records, where it records them.

    Templates come back as the set's name when they are a built-in set, else as the template
    strings the targets were built from (a templates file need not exist any more)."""
    prompts = (meta or {}).get("prompts")
    if not isinstance(prompts, dict):
        return None, None
    fmt = prompts.get("prompt_format", prompts.get("format"))
    name, strings = prompts.get("templates"), prompts.get("template_strings")
    if not (isinstance(strings, list) and strings and all(isinstance(t, str) for t in strings)):
        strings = None
    if (
        isinstance(name, str)
        and name in TEMPLATE_SETS
        and strings in (None, list(TEMPLATE_SETS[name]))
    ):
        templates = name
    else:
        templates = strings
    return (fmt if fmt in PROMPT_FORMATS else None), templates


def check_teacher(meta: dict, image_provenance: dict, audio_provenance: dict | None = None) -> None:
    """Refuse a distilled checkpoint whose teacher is not the image model evaluated against.

    The distilled encoder outputs vectors in its teacher's space: against another image model's
    gallery they mean nothing (`songsight.provenance.check_image_model`, non-strict: a Hub
    commit against a folder hash warns). A differing BioLingual base is only warned about.
    """
    from songsight.provenance import check_image_model, revision_kind

    teacher = dict(meta.get("image_model") or {})
    teacher["dim"] = (meta.get("head") or {}).get("out_dim", teacher.get("dim"))
    check_image_model(
        image_provenance, teacher, "the distilled checkpoint's teacher", strict=False,
        reference_name="the evaluation", hint="Pass the checkpoint's teacher as --image-model.",
    )  # fmt: skip
    base = meta.get("audio_model") or {}
    if audio_provenance and base.get("revision") and audio_provenance.get("revision"):
        a, b = str(base["revision"]), str(audio_provenance["revision"])
        if revision_kind(a) == revision_kind(b) and a != b:
            warnings.warn(
                f"the distilled checkpoint was fine-tuned from audio model revision {a}; the baselines "
                f"use revision {b}",
                stacklevel=2,
            )


def train_labels_of(meta: dict | None, species: list[Species]) -> list[int]:
    """Species labels a checkpoint was distilled on (ints, or names matched to ``species``); all if unknown."""
    raw = (meta or {}).get("train_labels")
    if raw is None:
        return [s.label for s in species]
    by_name = {
        n.lower(): s.label
        for s in species
        for n in (s.scientific_name, s.common_name, str(s.label))
    }
    labels, unknown = [], []
    for v in raw:
        if isinstance(v, (int, np.integer)) or (
            isinstance(v, str) and v.strip().lstrip("-").isdigit()
        ):
            labels.append(int(v))
        elif str(v).lower() in by_name:
            labels.append(by_name[str(v).lower()])
        else:
            unknown.append(v)
    if unknown:
        warnings.warn(
            f"train_labels of the checkpoint not in the species list, ignored: {unknown[:5]}",
            stacklevel=2,
        )
    return sorted(set(labels))


def select_methods(cfg: EvalConfig, has_distilled: bool) -> list[str]:
    asked = cfg.methods or [
        m for m in RETRIEVAL_METHODS if m not in DISTILLED_METHODS or has_distilled
    ]
    chosen = set(asked) | set(ALWAYS)
    return [m for m in RETRIEVAL_METHODS if m in chosen]
