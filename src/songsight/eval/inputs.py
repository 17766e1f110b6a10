"""The evaluation's inputs: sets of files embedded once per model, and species prompts.

Bad files are skipped, recorded as ``{"set", "path", "reason"}`` and warned about, never
fatal. Manifest hashes for provenance live here too.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from songsight.encoders.prompts import embed_species_text
from songsight.errors import InputFileError
from songsight.prompt_templates import resolve_templates
from songsight.taxonomy import Species

# Columns that identify an SSW60 row wherever the dataset lives (paths do not); a manifest
# without ids is identified by its paths instead.
ID_COLUMNS = ("asset_id", "label", "split", "source")
PATH_COLUMNS = ("path", "label", "split", "source")


def limit_rows(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most ``n`` rows, species taken in turn (seeded), kept in the table's original order."""
    if n is None or n >= len(df):
        return df.reset_index(drop=True)
    shuffled = df.sample(frac=1.0, random_state=seed)
    turn = shuffled.groupby("label", sort=False).cumcount().to_numpy()
    chosen = shuffled.assign(_turn=turn).sort_values(["_turn", "label"], kind="stable").head(n)
    return df.loc[sorted(chosen.index)].reset_index(drop=True)


def table_sha256(df: pd.DataFrame) -> str:
    """Content hash of the rows evaluated, over their id columns (location independent), or,
    in a manifest without ``asset_id``, over their paths (the same files elsewhere differ)."""
    from songsight.data.manifest import manifest_sha256

    key = ID_COLUMNS if "asset_id" in df.columns else PATH_COLUMNS
    cols = [c for c in key if c in df.columns] or list(df.columns)
    return manifest_sha256(df, cols)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def warn_skipped(skipped: list[dict], what: str, start: int) -> None:
    """One warning for the entries ``skipped[start:]`` (those of the set just embedded)."""
    new = skipped[start:]
    if new:
        first = new[0]
        warnings.warn(
            f"{len(new)} file(s) of {what} could not be used and were skipped (e.g. {first['path']}: "
            f"{first['reason']}); all are listed under data.skipped in the results",
            stacklevel=3,
        )


def _collect(
    results, n: int, dim: int, what: str, skipped: list[dict], value
) -> tuple[np.ndarray, np.ndarray]:
    start = len(skipped)
    emb = np.zeros((n, dim), np.float32)
    ok = np.zeros(n, bool)
    for i, res in results:
        if isinstance(res, InputFileError):
            skipped.append({"set": what, "path": res.path, "reason": res.reason})
            continue
        emb[i], ok[i] = value(res), True
    warn_skipped(skipped, what, start)
    return emb, ok


def embed_audio_set(
    encoder, paths: Sequence[str], what: str, skipped: list[dict]
) -> tuple[np.ndarray, np.ndarray]:
    """Clip embeddings (N, D) of ``paths`` (zero rows where a file failed) and the (N,) ok mask.

    One batched pass through the encoder (`embed_windows`), windows of several files per batch.
    """
    return _collect(
        encoder.embed_windows(list(paths)), len(paths), encoder.dim, what, skipped, lambda c: c.clip
    )


def embed_image_set(
    encoder, paths: Sequence[str], what: str, skipped: list[dict]
) -> tuple[np.ndarray, np.ndarray]:
    """Image embeddings (N, D) of ``paths`` (zero rows where a file failed) and the (N,) ok mask."""
    return _collect(
        encoder.iter_images(list(paths)), len(paths), encoder.dim, what, skipped, lambda e: e
    )


def embed_with_models(
    encoders: Mapping, df: pd.DataFrame, what: str, skipped: list[dict]
) -> tuple[pd.DataFrame, dict]:
    """Embed a manifest's audio once with every model; keep the rows every model could use."""
    embs, ok = {}, np.ones(len(df), bool)
    for name, enc in encoders.items():
        embs[name], good = embed_audio_set(enc, df["path"].tolist(), f"{what} ({name})", skipped)
        ok &= good
    return df.loc[ok].reset_index(drop=True), {k: v[ok] for k, v in embs.items()}


def prompt_variants(
    encoder, species: Sequence[Species], formats: Sequence[str], templates
) -> np.ndarray:
    """(S, F*T, D): every species' prompt in each form through each template (mapping inputs)."""
    tmpl = resolve_templates(templates)
    prompts = [p for sp in species for f in formats for p in tmpl.fill(sp, f)]
    emb = encoder.embed_texts(prompts)
    return emb.reshape(len(species), -1, emb.shape[1])


def choose_templates(
    encoder,
    species: Sequence[Species],
    fmt: str,
    candidates: Sequence,
    rows: pd.DataFrame,
    skipped: list[dict],
    what: str = "audio train",
    text_encoder=None,
) -> dict:
    """Zero-shot top-1 of ``encoder``'s audio of ``rows`` (``path``, ``label``) against the
    species text built by each candidate template set (by ``text_encoder``, default
    ``encoder``); the best (first on ties) is ``chosen``.

    Returns ``{"prompt_format", "n", "candidates": [{"spec", "templates", "top1"}], "chosen"}``
    (``chosen`` is the winning candidate's spec as given).
    """
    from songsight.eval.alignment import zero_shot

    paths, labels = rows["path"].tolist(), rows["label"].to_numpy(np.int64)
    emb, ok = embed_audio_set(encoder, paths, f"{what} (template choice)", skipped)
    species_labels = [s.label for s in species]
    scored = []
    for cand in candidates:
        tmpl = resolve_templates(cand)
        text = embed_species_text(text_encoder or encoder, species, fmt, tmpl)
        top1 = zero_shot(emb[ok], labels[ok], text, species_labels)["top1"]
        scored.append({"spec": cand, "templates": list(tmpl.templates), "top1": top1})
    best = max(range(len(scored)), key=lambda i: (np.nan_to_num(scored[i]["top1"], nan=-1.0), -i))
    chosen = candidates[best]
    return {"prompt_format": fmt, "n": int(ok.sum()), "candidates": scored, "chosen": chosen}
