"""Search a photo gallery with bird recordings: which photos, and which species, how sure.

A `Searcher` turns recordings into queries in the gallery's image space, either

- ``"distilled"``: the distilled audio encoder (`songsight.encoders.distilled`), whose outputs
  live in its BioCLIP-2 teacher's space, or
- ``"cascade: top1|weighted"``: zero-shot, no training. BioLingual scores the recording against
  the gallery's species names (its own text space), and BioCLIP-2's text embedding of the
  answer (or the probability-weighted mix) queries the photos (`songsight.baselines.cascade`).
  This needs a gallery whose photos carry species names.

Each recording gets a clip-level result (the re-normalised mean of its windows) and, when it is
longer than one window, one result per window with its times. Files are decoded block by block
with a streaming resampler (`songsight.audio_stream.iter_windows`), so an hour-long soundscape
costs the memory of one block and one batch of windows, not of the hour. Results are written
out by `songsight.results_io` (JSON records, table, CSV, Parquet, Raven).

Species roll-up: the top ``rollup_k`` photo scores ``s_i`` of a query become weights
``softmax(s_i / T)`` (``T = 0.01``, BioCLIP's CLIP logit scale of 100, in which image-text
cosines are calibrated), summed per species, and per genus and family when the gallery knows
them. A score is the share of the top-``rollup_k`` evidence that points at that taxon; photos
without a species keep their share, so species scores sum to at most 1.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# `X as X`: names that moved out and are still imported from here (re-exports).
from songsight.audio_stream import BLOCK_S as BLOCK_S
from songsight.audio_stream import DecodeInfo as DecodeInfo
from songsight.audio_stream import _embed_recordings, _Embedded
from songsight.audio_stream import iter_windows as iter_windows
from songsight.encoders.loading import BIOLINGUAL_ID
from songsight.errors import InputFileError, SongsightError
from songsight.results_io import CSV_COLUMNS as CSV_COLUMNS
from songsight.results_io import OUTPUT_FORMATS, write_raven, write_results
from songsight.results_io import RAVEN_COLUMNS as RAVEN_COLUMNS
from songsight.results_io import format_table as format_table
from songsight.results_io import results_to_records as results_to_records

__all__ = [
    "Hit",
    "Searcher",
    "SpeciesScore",
    "WindowResult",
    "format_table",
    "iter_windows",
    "results_to_records",
    "run_search",
    "search",
    "softmax_rollup",
    "write_raven",
    "write_results",
]

ROLLUP_K = 100
ROLLUP_TEMPERATURE = 0.01
TOP_SPECIES = 5


@dataclass
class Hit:
    """One retrieved photo: its gallery id, file, cosine score and species when known."""

    image_id: int
    image: str
    score: float
    species: str | None = None
    label: int | None = None
    common_name: str | None = None


@dataclass
class SpeciesScore:
    """A taxon's share of the top photo evidence; ``rank`` is species, genus or family."""

    name: str
    score: float
    rank: str
    label: int | None = None
    common_name: str | None = None


@dataclass
class WindowResult:
    """Hits and species roll-up for a whole recording (``window`` None) or one window of it."""

    path: str
    start_s: float
    end_s: float
    hits: list[Hit] = field(default_factory=list)
    species: list[SpeciesScore] = field(default_factory=list)
    window: int | None = None
    error: str | None = None
    answered_by: str = ""


# --- species roll-up ------------------------------------------------------------------------


def softmax_rollup(
    scores: np.ndarray, groups: np.ndarray, n_groups: int, temperature: float
) -> np.ndarray:
    """Mass per group of ``softmax(scores / temperature)``; (n_groups,) float64.

    ``scores`` (K,) photo scores (``-inf`` padding is ignored); ``groups`` (K,) int, the group
    of each photo, -1 for none (its mass counts in the softmax but in no group).
    """
    scores = np.asarray(scores, np.float64)
    groups = np.asarray(groups, np.int64)
    valid = np.isfinite(scores)
    out = np.zeros(n_groups, np.float64)
    if not valid.any():
        return out
    logits = scores[valid] / temperature
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    g = groups[valid]
    known = g >= 0
    return out + np.bincount(g[known], weights=weights[known], minlength=n_groups)[:n_groups]


class _Taxa:
    """Per gallery row: codes of its species, genus and family, and the names behind them."""

    def __init__(self, metadata):
        md = metadata
        species = md["species"].where(md["species"].notna(), md["common_name"])
        self.ranks: dict[str, tuple[np.ndarray, list[str]]] = {}
        for rank, column in (
            ("species", species),
            ("genus", md["genus"]),
            ("family", md["family"]),
        ):
            values = [None if _na(v) else str(v) for v in column.tolist()]
            names = sorted({v for v in values if v is not None})
            code = {name: c for c, name in enumerate(names)}
            self.ranks[rank] = (np.array([code.get(v, -1) for v in values], np.int64), names)
        # A species' label and common name: the first photo that has them.
        self.label: dict[str, int] = {}
        self.common: dict[str, str] = {}
        rows = zip(species.tolist(), md["label"].tolist(), md["common_name"].tolist(), strict=True)
        for name, label, common in rows:
            if _na(name):
                continue
            if name not in self.label and not _na(label):
                self.label[name] = int(label)
            if name not in self.common and not _na(common):
                self.common[name] = str(common)


def _na(value: Any) -> bool:
    if value is None:
        return True
    try:
        import pandas as pd

        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


# --- the searcher -----------------------------------------------------------------------------


class Searcher:
    """Recordings in, photos and species out, from one gallery.

    ``gallery``: a `Gallery` or its folder. ``model``: a distilled checkpoint folder; without
    it the zero-shot cascade answers, using ``audio_model`` (BioLingual) and the gallery's own
    image model (or ``image_model``, which must be the same weights) for species text.
    ``answered_by`` says which: ``"distilled"`` or ``"cascade: top1"`` / ``"cascade: weighted"``.
    """

    def __init__(
        self,
        gallery,
        model: str | Path | None = None,
        audio_model: str | Path = BIOLINGUAL_ID,
        image_model: str | Path | None = None,
        device: str | None = None,
        *,
        cascade_mode: str = "top1",
        cascade_temperature: float | None = None,
        rollup_k: int = ROLLUP_K,
        rollup_temperature: float = ROLLUP_TEMPERATURE,
        top_species: int = TOP_SPECIES,
        batch_size: int = 16,
        precision: str = "auto",
        prompt_format: str | None = None,
        templates: str | None = None,
        audio_prompt_format: str = "com",
        audio_templates: str = "sound",
    ):
        from songsight.encoders.base import l2_normalize
        from songsight.index.gallery import Gallery, check_image_model
        from songsight.index.gallery_format import _revision_kind

        self.gallery = gallery if isinstance(gallery, Gallery) else Gallery.open(gallery)
        if not (rollup_temperature > 0 and rollup_k >= 1 and top_species >= 1):
            raise SongsightError("rollup_temperature must be > 0, rollup_k and top_species >= 1")
        self.rollup_k, self.rollup_temperature, self.top_species = (
            int(rollup_k),
            float(rollup_temperature),
            int(top_species),
        )
        self._taxa = _Taxa(self.gallery.metadata)
        self._cascade: tuple[np.ndarray, np.ndarray, float] | None = None
        info: dict[str, Any] = {}
        if model is not None:
            from songsight.encoders.distilled import DistilledEncoder, read_meta

            meta = read_meta(model)
            teacher = dict(meta.get("image_model") or {})
            teacher.setdefault("dim", (meta.get("head") or {}).get("out_dim"))
            check_image_model(
                self.gallery.image_model, teacher, "the distilled model's teacher", strict=False
            )
            mine = self.gallery.image_model.get("revision")
            if _revision_kind(teacher.get("revision")) != _revision_kind(mine):
                warnings.warn(
                    f"cannot verify that the distilled model's teacher ({teacher.get('model_id')}) "
                    f"is the gallery's image model ({self.gallery.image_model.get('model_id')}): "
                    "one is a Hub commit, the other a local folder",
                    stacklevel=2,
                )
            self.encoder = DistilledEncoder(
                model, device=device, batch_size=batch_size, precision=precision
            )
            self.answered_by = "distilled"
        else:
            if cascade_mode not in ("top1", "weighted"):
                raise SongsightError(f"cascade mode must be top1 or weighted, not {cascade_mode!r}")
            if not self.gallery.has_species:
                raise SongsightError(
                    f"the gallery {self.gallery.directory} has no species names, so the "
                    "zero-shot cascade (audio -> species -> photos) has nothing to name; rebuild "
                    "it with --manifest (a species or label column, with --species TAXA_CSV), "
                    "or search with a distilled model (--model DIR)"
                )
            from songsight.encoders.bioclip import BioCLIPEncoder
            from songsight.encoders.biolingual import BioLingualEncoder
            from songsight.encoders.loading import resolve_model
            from songsight.taxonomy import TEMPLATE_SETS

            stored = self.gallery.image_model
            if image_model is not None:
                check_image_model(
                    stored, resolve_model(str(image_model), "image").provenance(), str(image_model)
                )
            self.encoder = BioLingualEncoder(
                audio_model, device=device, batch_size=batch_size, precision=precision
            )
            text_model = BioCLIPEncoder(
                str(image_model or stored["model_id"]),
                device=self.encoder.device,
                preprocess=stored["preprocessing"].get("choice", "model"),
                precision=precision,
            )
            check_image_model(stored, text_model.provenance(), "the image model given")
            species = self.gallery.species_list()
            prompt_format, templates = prompt_format or "taxon_com", templates or "none"
            image_text = text_model.embed_species(species, prompt_format, templates)
            del text_model  # only the species' text embeddings are needed from here on
            tmpl = TEMPLATE_SETS[audio_templates]
            prompts = [t.format(s.prompt(audio_prompt_format)) for s in species for t in tmpl]
            audio_text = l2_normalize(
                self.encoder.embed_texts(prompts).reshape(len(species), len(tmpl), -1).mean(1)
            )
            if cascade_temperature is None:
                # BioLingual's own zero-shot posterior: softmax(exp(logit_scale_a) * cosine).
                scale = self.encoder.model.logit_scale_a.detach().float().exp().cpu()
                cascade_temperature = float(1.0 / scale)
            self._cascade = (audio_text, image_text, float(cascade_temperature))
            self._cascade_mode = cascade_mode
            self.answered_by = f"cascade: {cascade_mode}"
            info = {
                "cascade_temperature": float(cascade_temperature),
                "prompt_format": prompt_format,
                "templates": templates,
                "audio_prompt_format": audio_prompt_format,
                "audio_templates": audio_templates,
                "n_species": len(species),
            }
        self.provenance = {
            "answered_by": self.answered_by,
            "audio_model": self.encoder.provenance(),
            "gallery": {
                "directory": str(self.gallery.directory),
                "image_model": self.gallery.image_model,
                "count": len(self.gallery),
            },
            "rollup": {"k": self.rollup_k, "temperature": self.rollup_temperature},
            **info,
        }

    @property
    def sample_rate_hz(self) -> int:
        return int(self.encoder.sample_rate_hz)

    def _queries(self, audio_emb: np.ndarray) -> np.ndarray:
        """(Q, D_audio) recording embeddings -> (Q, D_gallery) queries."""
        if self._cascade is None:
            return audio_emb
        from songsight.baselines.cascade import cascade_queries

        audio_text, image_text, temperature = self._cascade
        return cascade_queries(audio_emb, audio_text, image_text, temperature, self._cascade_mode)

    def _rollup(self, scores: np.ndarray, ids: np.ndarray) -> list[SpeciesScore]:
        out: list[SpeciesScore] = []
        safe = np.where(ids >= 0, ids, 0)
        for rank, (codes, names) in self._taxa.ranks.items():
            if not names:
                continue
            groups = np.where(ids >= 0, codes[safe], -1)
            mass = softmax_rollup(scores, groups, len(names), self.rollup_temperature)
            for c in np.argsort(-mass, kind="stable")[: self.top_species]:
                if mass[c] <= 0:
                    break
                name = names[c]
                is_species = rank == "species"
                out.append(
                    SpeciesScore(
                        name,
                        float(mass[c]),
                        rank,
                        self._taxa.label.get(name) if is_species else None,
                        self._taxa.common.get(name) if is_species else None,
                    )
                )
        return out

    def _hits(self, scores: np.ndarray, ids: np.ndarray, k: int) -> list[Hit]:
        md = self.gallery.metadata
        codes, names = self._taxa.ranks["species"]
        hits = []
        for s, i in zip(scores[:k], ids[:k], strict=True):
            if i < 0:
                break
            name = names[codes[i]] if codes[i] >= 0 else None
            label = md["label"].iat[int(i)]
            hits.append(
                Hit(
                    int(i),
                    str(md["path"].iat[int(i)]),
                    float(s),
                    name,
                    None if _na(label) else int(label),
                    self._taxa.common.get(name) if name else None,
                )
            )
        return hits

    def search(
        self,
        recordings: Sequence,
        k: int = 10,
        window_s: float | None = None,
        hop_s: float | None = None,
        progress: bool = False,
    ) -> list[WindowResult]:
        """Per recording, a clip-level result then, if longer than a window, one per window.

        ``recordings``: paths and/or ``(waveform, sample_rate_hz)`` tuples. ``window_s``
        defaults to the model's window, ``hop_s`` to half the window. A recording that
        cannot be used gives one result with ``error`` set; the others go on.
        """
        from songsight.encoders.biolingual import DEFAULT_HOP_FRACTION

        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise SongsightError(f"k must be a positive integer, got {k!r}")
        window_s = float(window_s or self.encoder.window_s)
        if not hop_s:
            same = window_s == self.encoder.window_s
            hop_s = self.encoder.hop_s if same else window_s * DEFAULT_HOP_FRACTION
        hop_s = float(hop_s)
        if not (0 < window_s <= self.encoder.model_window_s + 1e-9) or not hop_s > 0:
            raise SongsightError(
                f"window_s must be in (0, {self.encoder.model_window_s:g}] s (the model's window) "
                f"and hop_s > 0; got window_s={window_s:g}, hop_s={hop_s:g}"
            )
        sources = [r if isinstance(r, tuple) else Path(r) for r in recordings]
        names = [
            f"<array {i}>" if isinstance(r, tuple) else str(r) for i, r in enumerate(recordings)
        ]
        k_search = max(int(k), self.rollup_k)
        results: list[WindowResult] = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(sources), desc="searching", unit="recording", file=sys.stderr)
        try:
            for i, emb in _embed_recordings(self.encoder, sources, window_s, hop_s):
                if bar is not None:
                    bar.update(1)
                if isinstance(emb, InputFileError):
                    results.append(
                        WindowResult(
                            names[i], 0.0, 0.0, error=emb.reason, answered_by=self.answered_by
                        )
                    )
                    continue
                results.extend(self._results_for(names[i], emb, k, k_search))
        finally:
            if bar is not None:
                bar.close()
        return results

    def _results_for(self, name: str, emb: _Embedded, k: int, k_search: int) -> list[WindowResult]:
        from songsight.encoders.base import l2_normalize

        clip = l2_normalize(emb.windows.mean(axis=0, keepdims=True))
        per_window = len(emb.windows) > 1
        audio = np.concatenate([clip, emb.windows]) if per_window else clip
        scores, ids = self.gallery.search(self._queries(audio), k_search)
        spans = [(0.0, emb.duration_s, None)]
        if per_window:
            spans += [
                (float(a), float(b), w)
                for w, (a, b) in enumerate(zip(emb.starts_s, emb.ends_s, strict=True))
            ]
        return [
            WindowResult(
                name,
                start,
                end,
                self._hits(scores[q], ids[q], k),
                self._rollup(scores[q], ids[q]),
                window,
                None,
                self.answered_by,
            )
            for q, (start, end, window) in enumerate(spans)
        ]


def search(
    recordings: Sequence,
    gallery,
    model: str | Path | None = None,
    k: int = 10,
    window_s: float | None = None,
    hop_s: float | None = None,
    **searcher_options,
) -> list[WindowResult]:
    """One-call search: `Searcher(gallery, model, **searcher_options).search(recordings, k)`."""
    searcher = Searcher(gallery, model, **searcher_options)
    return searcher.search(recordings, k=k, window_s=window_s, hop_s=hop_s)


def run_search(
    recordings: Sequence[str | Path],
    gallery: str | Path,
    *,
    model: str | Path | None = None,
    audio_model: str | Path = BIOLINGUAL_ID,
    image_model: str | Path | None = None,
    k: int = 10,
    window_s: float | None = None,
    hop_s: float | None = None,
    fmt: str = "table",
    out: str | Path | None = None,
    raven: str | Path | None = None,
    device: str | None = None,
    cascade_mode: str = "top1",
    batch_size: int = 16,
    precision: str = "auto",
    progress: bool = True,
) -> int:
    """`songsight search`: folders are walked for audio files; writes the results; returns
    the exit code (1 when some recording could not be used, else 0)."""
    from songsight.audio import AUDIO_SUFFIXES
    from songsight.embed import collect_files

    if fmt not in OUTPUT_FORMATS:
        raise SongsightError(f"format must be one of {', '.join(OUTPUT_FORMATS)}, not {fmt!r}")
    if fmt == "parquet" and out is None:
        raise SongsightError("--format parquet needs --out FILE")
    files: list[Path] = []
    for r in map(Path, recordings):
        # A missing file is reported in the results like any other bad recording.
        files += collect_files([r], AUDIO_SUFFIXES) if r.is_dir() else [r]
    searcher = Searcher(
        gallery,
        model,
        audio_model=audio_model,
        image_model=image_model,
        device=device,
        cascade_mode=cascade_mode,
        batch_size=batch_size,
        precision=precision,
    )
    results = searcher.search(files, k=k, window_s=window_s, hop_s=hop_s, progress=progress)
    write_results(results, fmt, out, searcher.provenance)
    if raven is not None:
        write_raven(results, raven, searcher.sample_rate_hz / 2)
    failed = [r for r in results if r.error is not None]
    for r in failed:
        print(f"songsight: {r.path}: {r.error}", file=sys.stderr)
    return 1 if failed else 0
