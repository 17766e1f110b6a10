"""Which method answers a search, and what a search may be given beside it.

A distilled checkpoint answers with one of `SEARCH_METHODS` (the readouts of
`songsight.readout`, or the cascade through the BioLingual it was distilled from);
`default_method` is the one it answers a gallery with when none is asked, and the checks here
refuse, before anything loads, settings that a method would silently ignore.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from songsight.errors import SongsightError

if TYPE_CHECKING:
    from songsight.gallery import Gallery

__all__ = [
    "BASE_METHODS",
    "SEARCH_METHODS",
    "check_audio_model",
    "check_model_choice",
    "default_method",
    "fused_as_cascade",
]

SEARCH_METHODS = ("distilled", "distilled_proto", "fused", "cascade")
# The methods that run the BioLingual a checkpoint was distilled from (its "base"), the only
# ones ``audio_model`` (``--audio-model``) can mean anything to beside a distilled model.
BASE_METHODS = ("fused", "cascade")


def default_method(meta: dict, gallery: Gallery) -> str:
    """The method a distilled checkpoint (its ``meta``) answers ``gallery`` with when none is
    asked: its recorded ``readout`` (``distilled`` for checkpoints that record none), except that
    a gallery without species names is searched with ``distilled`` and a ``distilled_proto``
    becomes ``fused`` when the gallery holds species it was not distilled on."""
    recorded = (meta.get("readout") or {}).get("method") or "distilled"
    if not gallery.has_species and recorded != "distilled":
        # The posterior readouts name a species; photos without names leave only the raw
        # embedding to search with.
        return "distilled"
    if recorded == "distilled_proto" and gallery.has_species:
        # distilled_proto never names a species the model was not distilled on: a gallery
        # holding such species is answered by fused, which names them through the cascade.
        trained = {str(n).lower() for n in meta.get("train_species") or []}
        if any(s.scientific_name.lower() not in trained for s in gallery.species_list()):
            return "fused"
    return recorded


def check_audio_model(audio_model, method: str, asked: bool, model) -> None:
    """``audio_model`` beside the distilled ``model`` says where the BioLingual it was
    distilled from now is: accepted only when ``method`` runs that base (`BASE_METHODS`),
    whether it was ``asked`` for or is the checkpoint's own; refused with the others, which
    would silently ignore it."""
    if audio_model is None or method in BASE_METHODS:
        return
    how = "asked for" if asked else f"the method {model} answers this gallery with"
    raise SongsightError(
        "--audio-model beside --model says where the BioLingual that model was distilled from "
        f"now is, for the methods that run it (--method fused, cascade); {method!r} ({how}) "
        "runs the distilled model alone and would ignore it: drop --audio-model, pass --method "
        "fused or cascade, or drop --model for the zero-shot cascade with that audio model"
    )


def check_model_choice(
    model, method, audio_model, image_model, cascade: dict | None = None
) -> None:
    """Refuse, before anything loads, a method without the model it needs, an image model
    beside a distilled one, an audio model beside a method that runs no BioLingual base, and
    the zero-shot cascade's settings (``cascade``: name -> value, None when not given) beside
    a distilled model, which answers with the prompts recorded in its checkpoint and would
    silently ignore them.

    ``audio_model`` beside ``model`` says where the BioLingual base lives, so it is taken by
    the methods that run one (`check_audio_model`); with the checkpoint's own method it is
    judged once that is known, in `load_distilled_query_encoder`.
    """
    if method is not None and method not in SEARCH_METHODS:
        raise SongsightError(f"unknown method {method!r}; choose from {', '.join(SEARCH_METHODS)}")
    if model is None and method not in (None, "cascade"):
        raise SongsightError(f"method {method!r} needs a distilled model: pass --model DIR")
    if model is not None and method is not None:
        check_audio_model(audio_model, method, True, model)
    if model is not None and image_model is not None:
        raise SongsightError(
            "--image-model chooses the zero-shot cascade's image model; a distilled model "
            "(--model) has its teacher checked against the gallery's image model, which the "
            "cascade through it uses too: drop --image-model, or drop --model"
        )
    given = [k for k, v in (cascade or {}).items() if v is not None]
    if model is not None and given:
        flags = ", ".join("--" + ("cascade" if k == "cascade_mode" else k).replace("_", "-") for k in given)  # fmt: skip
        raise SongsightError(
            f"{flags} set the zero-shot cascade's prompts and posterior; a distilled model "
            "(--model) answers with the prompts it was distilled with, recorded in its "
            f"checkpoint, so {'they' if len(given) > 1 else 'it'} would change nothing: drop "
            f"{'them' if len(given) > 1 else 'it'}, or drop --model"
        )


def fused_as_cascade(weight: float) -> str | None:
    """Why a fused readout answers exactly as the cascade, or None when it may not.

    `songsight.readout.fuse_posteriors` keeps the cascade's posterior where its answer
    was not distilled and otherwise takes the most probable distilled species of
    ``p_distilled^w * p_cascade^(1 - w)``: at ``w = 0`` that is the cascade's own answer.
    """
    if weight == 0.0:
        return "its fused readout has fusion weight 0, which answers exactly as the cascade"
    return None
