"""Search a photo gallery with bird recordings: which photos, and which species, how sure.

A `Searcher` turns recordings into queries in the gallery's image space, either

- ``"distilled"``: the distilled audio encoder (`songsight.encoders.distilled`), whose outputs
  live in its BioCLIP-2 teacher's space, or
- ``"cascade: top1|weighted"``: zero-shot, no training. BioLingual scores the recording against
  the gallery's species names (its own text space), and BioCLIP-2's text embedding of the
  answer (or the probability-weighted mix) queries the photos (`songsight.baselines.cascade`).
  This needs a gallery whose photos carry species names.

(both built in `songsight.query_encoders`). Each recording gets a clip-level result (the
re-normalised mean of its windows) and, when it is longer than one window, one result per
window with its times. Files are decoded block by block with a streaming resampler
(`songsight.audio_stream.iter_windows`), so an hour-long soundscape costs the memory of one
block and one batch of windows, not of the hour. The photos found are named and rolled up into
species, genus and family scores by `songsight.rollup`; the results (`songsight.results`) are
written out by `songsight.results_io` (JSON records, table, CSV, Parquet, Raven).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# `X as X`: names that moved out and are still imported from here (re-exports).
from songsight.audio_stream import BLOCK_S as BLOCK_S
from songsight.audio_stream import DecodeInfo as DecodeInfo
from songsight.audio_stream import _embed_recordings, _Embedded
from songsight.audio_stream import iter_windows as iter_windows
from songsight.encoders.loading import BIOLINGUAL_ID
from songsight.errors import InputFileError, SongsightError
from songsight.query_encoders import build_cascade_query_encoder, load_distilled_query_encoder
from songsight.results import Hit as Hit
from songsight.results import SpeciesScore as SpeciesScore
from songsight.results import WindowResult
from songsight.results_io import CSV_COLUMNS as CSV_COLUMNS
from songsight.results_io import OUTPUT_FORMATS, write_raven, write_results
from songsight.results_io import RAVEN_COLUMNS as RAVEN_COLUMNS
from songsight.results_io import format_table as format_table
from songsight.results_io import results_to_records as results_to_records
from songsight.rollup import ROLLUP_K, ROLLUP_TEMPERATURE, TOP_SPECIES, GalleryTaxa
from songsight.rollup import softmax_rollup as softmax_rollup

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
        from songsight.index.gallery import Gallery

        self.gallery = gallery if isinstance(gallery, Gallery) else Gallery.open(gallery)
        if not (rollup_temperature > 0 and rollup_k >= 1 and top_species >= 1):
            raise SongsightError("rollup_temperature must be > 0, rollup_k and top_species >= 1")
        self.rollup_k, self.rollup_temperature, self.top_species = (
            int(rollup_k),
            float(rollup_temperature),
            int(top_species),
        )
        self._taxa = GalleryTaxa(self.gallery.metadata)
        if model is not None:
            self._query = load_distilled_query_encoder(
                self.gallery, model, device, batch_size=batch_size, precision=precision
            )
        else:
            self._query = build_cascade_query_encoder(
                self.gallery,
                audio_model,
                image_model,
                device,
                cascade_mode=cascade_mode,
                cascade_temperature=cascade_temperature,
                batch_size=batch_size,
                precision=precision,
                prompt_format=prompt_format,
                templates=templates,
                audio_prompt_format=audio_prompt_format,
                audio_templates=audio_templates,
            )
        self.encoder = self._query.encoder
        self.answered_by = self._query.answered_by
        self.provenance = {
            "answered_by": self.answered_by,
            "audio_model": self.encoder.provenance(),
            "gallery": {
                "directory": str(self.gallery.directory),
                "image_model": self.gallery.image_model,
                "count": len(self.gallery),
            },
            "rollup": {"k": self.rollup_k, "temperature": self.rollup_temperature},
            **self._query.info,
        }

    @property
    def sample_rate_hz(self) -> int:
        return int(self.encoder.sample_rate_hz)

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
        scores, ids = self.gallery.search(self._query.queries(audio), k_search)
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
                self._taxa.hits(self.gallery.metadata, scores[q], ids[q], k),
                self._taxa.species_scores(
                    scores[q], ids[q], self.rollup_temperature, self.top_species
                ),
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
