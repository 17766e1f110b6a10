"""Search a photo gallery with bird recordings: which photos, and which species, how sure.

A `Searcher` turns recordings into queries in the gallery's image space, either

- ``"distilled"``: the distilled audio encoder (`songsight.encoders.distilled`), whose outputs
  live in its BioCLIP-2 teacher's space, or
- ``"cascade: top1|weighted"``: zero-shot, no training. BioLingual scores the recording against
  the gallery's species names (its own text space), and BioCLIP-2's text embedding of the
  answer (or the probability-weighted mix) queries the photos (`songsight.baselines.cascade`).
  This needs a gallery whose photos carry species names.

(both built in `songsight.retrieval.queries`). Each recording gets a clip-level result (the
re-normalised mean of its windows) and, when it is longer than one window, one result per
window with its times. Files are decoded block by block with a streaming resampler
(`songsight.inputs.stream.iter_windows`, embedded by `songsight.encoders.windows`), so an hour-long soundscape costs the memory of one
block and one batch of windows, not of the hour. The photos found are named and rolled up into
species, genus and family scores by `songsight.retrieval.rollup`; the results (`songsight.retrieval.results`) are
written out by `songsight.retrieval.writers` (JSON records, table, CSV, Parquet, Raven).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from songsight.encoders.base import ClipEmbedding
from songsight.encoders.loading import BIOLINGUAL_ID
from songsight.errors import InputFileError, SongsightError
from songsight.retrieval.methods import check_model_choice
from songsight.retrieval.queries import build_cascade_query_encoder, load_distilled_query_encoder
from songsight.retrieval.results import WindowResult, keep_detections
from songsight.retrieval.rollup import ROLLUP_K, ROLLUP_TEMPERATURE, TOP_SPECIES, GalleryTaxa
from songsight.retrieval.species_filter import SpeciesFilter

__all__ = ["Searcher", "search"]


MIN_DURATION_S = 0.5  # shorter recordings have too little sound to name a bird: flagged


class Searcher:
    """Recordings in, photos and species out, from one gallery.

    ``gallery``: a `Gallery` or its folder. ``model``: a distilled checkpoint folder; without
    it the zero-shot cascade answers, using ``audio_model`` (BioLingual by default) and the
    gallery's own image model (or ``image_model``, which must be the same weights) for species
    text. A distilled model's teacher is the image model, so ``image_model`` is refused with
    it; ``audio_model`` with it says where the BioLingual it was distilled from now is, and is
    taken only by the methods that run that base (``fused``, ``cascade``), whether asked for or
    the checkpoint's own, and refused with the others, which would ignore it.
    ``method`` (with ``model``): ``distilled``, ``distilled_proto``, ``fused`` or ``cascade``,
    default the checkpoint's validated readout (`songsight.retrieval.queries`). ``answered_by``
    says what computes the queries: the method's name, or ``"cascade: top1"`` /
    ``"cascade: weighted"``, which is also what a fused readout that cannot change the
    cascade's answer (fusion weight 0) says, since it is the cascade.

    Species scores are probabilities whose temperature is the gallery's recorded calibration
    for this model and method (``songsight index calibrate``), else the default (see
    `songsight.retrieval.rollup`); ``rollup_temperature`` overrides both. A gallery calibrated
    only for other methods or models is named in a warning and in ``provenance["rollup"]``
    (`songsight.retrieval.calibration.calibration_note`). ``species_list``: a file or names
    restricting every search to those species (`songsight.retrieval.species_filter`).
    Recordings shorter than ``min_duration_s`` or silent are flagged and get no answer.
    ``runtime`` (``auto``, ``torch``, ``onnxruntime``) runs the audio encoders as
    `songsight.encoders.runtime` chooses; with the gallery's cached species text
    (`songsight.retrieval.species_text`), a search on a CPU then never imports torch.
    ``quiet``: no notice about the device chosen.
    """

    def __init__(
        self,
        gallery,
        model: str | Path | None = None,
        audio_model: str | Path | None = None,
        image_model: str | Path | None = None,
        device: str | None = None,
        *,
        cascade_mode: str = "top1",
        cascade_temperature: float | None = None,
        rollup_k: int = ROLLUP_K,
        rollup_temperature: float | None = None,
        top_species: int = TOP_SPECIES,
        batch_size: int = 16,
        precision: str = "auto",
        prompt_format: str | None = None,
        templates: str | None = None,
        audio_prompt_format: str | None = None,
        audio_templates: str | None = None,
        species_list: str | Path | Sequence[str] | None = None,
        min_duration_s: float = MIN_DURATION_S,
        method: str | None = None,
        runtime: str = "auto",
        quiet: bool = False,
    ):
        from songsight.gallery import Gallery
        from songsight.retrieval.calibration import rollup_calibration

        check_model_choice(
            model, method, audio_model, image_model,
            cascade={"prompt_format": prompt_format, "templates": templates,
                     "audio_prompt_format": audio_prompt_format,
                     "audio_templates": audio_templates,
                     "cascade_mode": None if cascade_mode == "top1" else cascade_mode,
                     "cascade_temperature": cascade_temperature},
        )  # fmt: skip
        self.gallery = gallery if isinstance(gallery, Gallery) else Gallery.open(gallery)
        if len(self.gallery) == 0:
            raise SongsightError(
                f"the gallery {self.gallery.directory} holds no photos; add some with "
                f"`songsight index add PHOTOS --gallery {self.gallery.directory}`"
            )
        temperature_given = rollup_temperature is not None
        rollup_temperature = (
            ROLLUP_TEMPERATURE if rollup_temperature is None else rollup_temperature
        )
        if not (rollup_temperature > 0 and rollup_k >= 1 and top_species >= 1):
            raise SongsightError("rollup_temperature must be > 0, rollup_k and top_species >= 1")
        self.rollup_k, self.rollup_temperature, self.top_species = (
            int(rollup_k),
            float(rollup_temperature),
            int(top_species),
        )
        self.min_duration_s = float(min_duration_s)
        self._taxa = GalleryTaxa(self.gallery.metadata)
        if model is not None:
            self._query = load_distilled_query_encoder(
                self.gallery, model, device, method=method, audio_model=audio_model,
                batch_size=batch_size, precision=precision, runtime=runtime, quiet=quiet,
            )  # fmt: skip
        else:
            self._query = build_cascade_query_encoder(
                self.gallery,
                audio_model or BIOLINGUAL_ID,
                image_model,
                device,
                cascade_mode=cascade_mode,
                cascade_temperature=cascade_temperature,
                batch_size=batch_size,
                precision=precision,
                prompt_format=prompt_format,
                templates=templates,
                audio_prompt_format=audio_prompt_format or "com",
                audio_templates=audio_templates or "sound",
                runtime=runtime,
                quiet=quiet,
            )
        self.encoder = self._query.encoder
        self.answered_by = self._query.answered_by
        temperature, rollup = rollup_calibration(
            self, temperature_given, model, audio_model, cascade_mode
        )
        if temperature is not None:
            self.rollup_temperature = temperature
        self.species = None if species_list is None else self.species_filter(species_list)
        self.provenance = {
            "answered_by": self.answered_by,
            "audio_model": self.encoder.provenance(),
            "gallery": {
                "directory": str(self.gallery.directory),
                "image_model": self.gallery.image_model,
                "count": len(self.gallery),
            },
            "rollup": {"k": self.rollup_k, "temperature": self.rollup_temperature, **rollup},
            **({"species_filter": self.species.describe()} if self.species else {}),
            **self._query.info,
        }

    @property
    def sample_rate_hz(self) -> int:
        return int(self.encoder.sample_rate_hz)

    def species_filter(self, species_list, source: str | None = None) -> SpeciesFilter:
        """A species list (file path, or names / codes) resolved against this gallery."""
        from songsight.retrieval.species_filter import read_species_list, species_filter

        if isinstance(species_list, SpeciesFilter):
            return species_list
        if isinstance(species_list, (str, Path)):
            source = source or str(species_list)
            species_list = read_species_list(species_list)
        codes, names = self._taxa.ranks["species"]
        if not names:
            raise SongsightError(
                f"the gallery {self.gallery.directory} has no species names, so a species list "
                "cannot choose among its photos"
            )
        return species_filter(
            species_list, self.gallery.metadata, codes, names, source or "species list"
        )

    def _windowing(self, window_s: float | None, hop_s: float | None) -> tuple[float, float]:
        return self.encoder.windowing(window_s, hop_s)

    def search(
        self,
        recordings,
        k: int = 10,
        window_s: float | None = None,
        hop_s: float | None = None,
        progress: bool = False,
        *,
        min_score: float = 0.0,
        species=None,
    ) -> list[WindowResult]:
        """Per recording, a clip-level result then, if longer than a window, one per window.

        ``recordings``: a path, or a list of paths and/or ``(waveform, sample_rate_hz)``
        tuples. ``window_s`` defaults to the model's window, ``hop_s`` to half the window. A
        recording that cannot be used gives one result with ``error`` set; the others go on.
        ``min_score``: keep only species scoring at least this, and only the windows that
        keep one (`songsight.retrieval.results.keep_detections`). ``species``: a species list for this
        search (names, a file or a `SpeciesFilter`); default the searcher's own.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise SongsightError(f"k must be a positive integer, got {k!r}")
        if not 0 <= float(min_score) <= 1:
            raise SongsightError(f"min_score is a probability, in [0, 1]; got {min_score!r}")
        if min_score > 0 and not self._taxa.ranks["species"][1]:
            raise SongsightError(
                "--min-score keeps species above a score, but this gallery has no species names"
            )
        window_s, hop_s = self._windowing(window_s, hop_s)
        chosen = self.species if species is None else self.species_filter(species)
        sources, names = _sources(recordings)
        k_search = max(int(k), self.rollup_k)
        results: list[WindowResult] = []
        for i, emb, scores, ids in self._answers(
            sources, window_s, hop_s, k_search, chosen, progress, all_windows=True
        ):
            if isinstance(emb, InputFileError):
                results.append(
                    WindowResult(names[i], 0.0, 0.0, error=emb.reason, answered_by=self.answered_by)
                )
            else:
                results.extend(self._results_for(names[i], emb, scores, ids, k, window_s))
        return keep_detections(results, min_score) if min_score > 0 else results

    def clip_answers(self, recordings, window_s=None, hop_s=None, progress: bool = False):
        """Each usable recording's whole-file top ``rollup_k`` photos, for calibration:
        yields ``(index, scores (K,), ids (K,))``, or ``(index, None, None)`` when the
        recording is unusable (an error, silent or too short)."""
        window_s, hop_s = self._windowing(window_s, hop_s)
        sources, _ = _sources(recordings)
        for i, emb, scores, ids in self._answers(
            sources, window_s, hop_s, self.rollup_k, None, progress, all_windows=False
        ):
            if isinstance(emb, InputFileError) or self._flags(emb, window_s):
                yield i, None, None
            else:
                yield i, scores[0], ids[0]

    def _flags(self, emb: ClipEmbedding, window_s: float) -> list[str]:
        flags = ["silent"] if emb.silent else []
        if emb.duration_s < min(self.min_duration_s, window_s):
            flags.append("too_short")
        return flags

    def _answers(self, sources, window_s, hop_s, k_search, chosen, progress, all_windows):
        """(index, embedded or error, scores (Q, K), ids (Q, K)): query 0 is the whole
        recording (the mean of its windows that are not silent), then each window."""
        allowed = None if chosen is None else set(chosen.names)
        allowed_ids = None if chosen is None else chosen.allowed_ids
        bar = _AudioProgress(sources) if progress else None
        embedded = (
            self.encoder.embed_windows(sources, window_s, hop_s)
            if bar is None
            else self.encoder.embed_windows(sources, window_s, hop_s, on_progress=bar.embedded)
        )
        try:
            for i, emb in embedded:
                if bar is not None:
                    bar.finished(i, emb)
                if isinstance(emb, InputFileError):
                    yield i, emb, None, None
                    continue
                clip = emb.heard_clip()[None]
                audio = (
                    np.concatenate([clip, emb.windows])
                    if all_windows and len(emb.windows) > 1
                    else clip
                )
                queries = self._query.queries(audio, allowed)
                scores, ids = self.gallery.search(queries, k_search, allowed_ids)
                yield i, emb, scores, ids
        finally:
            if bar is not None:
                bar.close()

    def _results_for(self, name, emb: ClipEmbedding, scores, ids, k: int, window_s: float):
        flags = self._flags(emb, window_s)
        spans = [(0.0, emb.duration_s, None, flags)]
        if len(emb.windows) > 1:
            spans += [
                (float(a), float(b), w, ["silent"] if flags or emb.window_silent[w] else [])
                for w, (a, b) in enumerate(zip(emb.starts_s, emb.ends_s, strict=True))
            ]
        out = []
        for q, (start, end, window, why) in enumerate(spans):
            # No usable signal: no photos and no species, rather than those nearest to noise.
            hits = [] if why else self._taxa.hits(self.gallery.metadata, scores[q], ids[q], k)
            taxa = (
                []
                if why
                else self._taxa.species_scores(
                    scores[q], ids[q], self.rollup_temperature, self.top_species
                )
            )
            out.append(
                WindowResult(name, start, end, hits, taxa, window, None, self.answered_by, why)
            )
        return out


def _duration_s(source) -> float | None:
    """A recording's duration from its header (soundfile.info, no decoding) or its array;
    None when it cannot be read that cheaply (a missing, broken or headerless file)."""
    if isinstance(source, tuple):
        wave, rate = source
        try:
            return float(np.shape(wave)[0]) / float(rate)
        except (IndexError, TypeError, ValueError, ZeroDivisionError):
            return None
    import soundfile as sf

    try:
        duration = float(sf.info(str(source)).duration)
    except Exception:  # noqa: BLE001 - any unreadable header: the bar learns it while decoding
        return None
    return duration if np.isfinite(duration) and duration > 0 else None


class _AudioProgress:
    """The search bar, in seconds of audio embedded, so that one long file moves it window by
    window. Its total is the recordings' durations read from their headers; a recording whose
    duration cannot be read adds to the total as its windows are embedded."""

    def __init__(self, sources):
        from tqdm.auto import tqdm

        self.expected = [_duration_s(s) for s in sources]
        self.done = [0.0] * len(sources)
        self.bar = tqdm(
            total=sum(d for d in self.expected if d is not None),
            desc="searching",
            unit="s",
            file=sys.stderr,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of audio "
            "[{elapsed}<{remaining}]",
        )

    def _advance(self, i: int, to_s: float) -> None:
        step = to_s - self.done[i]
        if step <= 0:
            return
        self.done[i] = to_s
        if self.expected[i] is None:
            self.bar.total += step
        self.bar.update(step)

    def embedded(self, i: int, seconds: float) -> None:
        """`songsight.encoders.windows.embed_windows`'s hook: ``i``'s audio embedded so far."""
        expected = self.expected[i]
        self._advance(i, seconds if expected is None else min(seconds, expected))

    def finished(self, i: int, result) -> None:
        """Recording ``i`` is done (embedded or failed): its whole duration counts."""
        expected = self.expected[i]
        if isinstance(result, InputFileError):
            self._advance(i, expected if expected is not None else self.done[i])
        else:
            if expected is not None and abs(result.duration_s - expected) > 1e-6:
                # The header's duration and the decoded one differ a little (resampling):
                # the decoded one is what was searched.
                self.bar.total += result.duration_s - expected
                self.expected[i] = result.duration_s
            self._advance(i, result.duration_s)

    def close(self) -> None:
        self.bar.close()


def _sources(recordings) -> tuple[list, list[str]]:
    """Recordings as decode sources and display names; a lone path or array is one recording."""
    if isinstance(recordings, (str, Path)) or (
        isinstance(recordings, tuple)
        and len(recordings) == 2
        and isinstance(recordings[0], np.ndarray)
    ):
        recordings = [recordings]
    sources = [r if isinstance(r, tuple) else Path(r) for r in recordings]
    names = [f"<array {i}>" if isinstance(r, tuple) else str(r) for i, r in enumerate(recordings)]
    return sources, names


def search(
    recordings,
    gallery,
    model: str | Path | None = None,
    k: int = 10,
    window_s: float | None = None,
    hop_s: float | None = None,
    *,
    min_score: float = 0.0,
    **searcher_options,
) -> list[WindowResult]:
    """One-call search: `Searcher(gallery, model, **searcher_options).search(recordings, k)`.

    ``recordings``: one path or a list of them (or of ``(waveform, rate)`` arrays).
    """
    searcher = Searcher(gallery, model, **searcher_options)
    return searcher.search(recordings, k=k, window_s=window_s, hop_s=hop_s, min_score=min_score)
