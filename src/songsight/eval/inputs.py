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

from songsight.encoders.base import l2_normalize
from songsight.errors import InputFileError
from songsight.taxonomy import TEMPLATE_SETS, Species

# Columns that identify an SSW60 row wherever the dataset lives (paths do not).
ID_COLUMNS = ("asset_id", "label", "split", "source")


def limit_rows(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most ``n`` rows, species taken in turn (seeded), kept in the table's original order."""
    if n is None or n >= len(df):
        return df.reset_index(drop=True)
    shuffled = df.sample(frac=1.0, random_state=seed)
    turn = shuffled.groupby("label", sort=False).cumcount().to_numpy()
    chosen = shuffled.assign(_turn=turn).sort_values(["_turn", "label"], kind="stable").head(n)
    return df.loc[sorted(chosen.index)].reset_index(drop=True)


def table_sha256(df: pd.DataFrame) -> str:
    """Content hash of the rows evaluated, over their id columns (location independent)."""
    from songsight.data.manifest import manifest_sha256

    cols = [c for c in ID_COLUMNS if c in df.columns] or list(df.columns)
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

    One batched pass through the encoder (`iter_clips`), windows of several files per batch.
    """
    return _collect(
        encoder.iter_clips(list(paths)), len(paths), encoder.dim, what, skipped, lambda c: c.clip
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


def species_text(encoder, species: Sequence[Species], fmt: str, templates: str) -> np.ndarray:
    """(S, D): each species' prompt through every template, averaged, re-normalised."""
    tmpl = TEMPLATE_SETS[templates]
    prompts = [t.format(sp.prompt(fmt)) for sp in species for t in tmpl]
    emb = encoder.embed_texts(prompts).reshape(len(species), len(tmpl), -1)
    return l2_normalize(emb.mean(axis=1))


def prompt_variants(
    encoder, species: Sequence[Species], formats: Sequence[str], templates: str
) -> np.ndarray:
    """(S, F*T, D): every species' prompt in each form through each template (mapping inputs)."""
    prompts = [
        t.format(sp.prompt(f)) for sp in species for f in formats for t in TEMPLATE_SETS[templates]
    ]
    emb = encoder.embed_texts(prompts)
    return emb.reshape(len(species), -1, emb.shape[1])
