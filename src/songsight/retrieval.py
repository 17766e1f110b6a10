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
with a streaming resampler (`iter_windows`), so an hour-long soundscape costs the memory of one
block and one batch of windows, not of the hour.

Species roll-up: the top ``rollup_k`` photo scores ``s_i`` of a query become weights
``softmax(s_i / T)`` (``T = 0.01``, BioCLIP's CLIP logit scale of 100, in which image-text
cosines are calibrated), summed per species, and per genus and family when the gallery knows
them. A score is the share of the top-``rollup_k`` evidence that points at that taxon; photos
without a species keep their share, so species scores sum to at most 1.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from songsight.encoders.loading import BIOLINGUAL_ID
from songsight.errors import InputFileError, SongsightError

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
BLOCK_S = 30.0  # decode this much audio at a time
OUTPUT_FORMATS = ("table", "csv", "json", "parquet")
RAVEN_COLUMNS = (
    "Selection",
    "View",
    "Channel",
    "Begin Time (s)",
    "End Time (s)",
    "Low Freq (Hz)",
    "High Freq (Hz)",
    "Species",
    "Score",
)


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


# --- decoding, block by block ---------------------------------------------------------------


@dataclass
class DecodeInfo:
    """Filled in while `iter_windows` runs: what the recording turned out to be."""

    n_samples: int = 0  # at the target rate
    sample_rate_hz: int = 0
    source_rate_hz: int = 0
    silent: bool = False

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sample_rate_hz if self.sample_rate_hz else 0.0


def _reason(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    text = re.sub(r"^Error opening .*?: ", "", lines[-1]) if lines else type(exc).__name__
    # libsndfile says "File does not exist" for undecodable data in a file that does exist.
    return ("format not recognised or data corrupt" if "does not exist" in text else text)[:200]


def _file_blocks(path: Path, block_s: float, info: DecodeInfo) -> Iterator[np.ndarray]:
    """(T, C) float32 blocks of a file at its own rate; `InputFileError` when unusable."""
    import soundfile as sf

    name = str(path)
    if not path.is_file():
        raise InputFileError(name, "file not found")
    if path.stat().st_size == 0:
        raise InputFileError(name, "empty file (0 bytes)")
    try:
        fh = sf.SoundFile(name)
    except Exception as exc:
        raise InputFileError(name, f"not a readable audio file ({_reason(exc)})") from None
    with fh:
        info.source_rate_hz = int(fh.samplerate)
        blocks = fh.blocks(
            blocksize=max(1, int(block_s * fh.samplerate)), dtype="float32", always_2d=True
        )
        while True:
            try:
                block = next(blocks)
            except StopIteration:
                return
            except Exception as exc:
                raise InputFileError(
                    name, f"corrupt audio, decoding failed ({_reason(exc)})"
                ) from None
            yield block


def iter_windows(
    source,
    sample_rate_hz: int,
    window_s: float,
    hop_s: float,
    info: DecodeInfo | None = None,
    block_s: float = BLOCK_S,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, end, samples)`` of each analysis window, cut as `audio.window_bounds` cuts.

    ``source``: a file path, decoded ``block_s`` at a time, downmixed and resampled to
    ``sample_rate_hz`` by a streaming soxr resampler (which gives the same samples as resampling
    the whole file at once); memory holds one block plus one window whatever the duration. Or
    a ``(waveform, rate)`` tuple, already in memory. Sample indices are at ``sample_rate_hz``.
    ``info`` is filled in as decoding goes (duration and silence are known at the end). Raises
    `InputFileError` (possibly after some windows) for unusable audio.
    """
    from songsight.audio import SILENCE_PEAK, prepare_waveform, to_mono, window_bounds

    info = info if info is not None else DecodeInfo()
    info.sample_rate_hz = int(sample_rate_hz)
    win = int(round(window_s * sample_rate_hz))
    hop = int(round(hop_s * sample_rate_hz))
    if win <= 0 or hop <= 0:
        raise ValueError("window_s and hop_s must be positive")
    if isinstance(source, tuple):
        wave, rate = source
        audio = prepare_waveform(wave, rate, int(sample_rate_hz), "<array>")
        info.source_rate_hz, info.silent = audio.source_rate_hz, audio.silent
        info.n_samples = len(audio.waveform)
        for a, b in window_bounds(len(audio.waveform), int(sample_rate_hz), window_s, hop_s):
            yield a, b, audio.waveform[a:b]
        return

    import soxr

    path = Path(source)
    buf = np.zeros(0, np.float32)
    buf_start = next_start = n = n_source = 0
    peak = 0.0
    resampler = None

    def feed(chunk: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
        nonlocal buf, buf_start, next_start, n
        buf = np.concatenate([buf, chunk]) if len(buf) else chunk
        n += len(chunk)
        while next_start + win <= n:
            a = next_start - buf_start
            yield next_start, next_start + win, buf[a : a + win].copy()
            next_start += hop
        # Keep what a later full window or the final end-aligned window can still need.
        keep_from = max(buf_start, min(next_start, n - win))
        buf, buf_start = buf[keep_from - buf_start :], keep_from

    for block in _file_blocks(path, block_s, info):
        mono = to_mono(block)
        if not np.isfinite(mono).all():
            raise InputFileError(str(path), "audio contains NaN or infinite samples")
        if len(mono):
            peak = max(peak, float(mono.max()), -float(mono.min()))
        n_source += len(mono)
        if info.source_rate_hz != sample_rate_hz and resampler is None:
            resampler = soxr.ResampleStream(
                info.source_rate_hz, int(sample_rate_hz), 1, dtype="float32", quality="HQ"
            )
        yield from feed(resampler.resample_chunk(mono) if resampler else mono)
    if resampler is not None:
        yield from feed(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    if n_source == 0 or n == 0:
        raise InputFileError(str(path), "zero-length audio (no samples)")
    info.n_samples, info.silent = n, peak < SILENCE_PEAK
    if n < win:
        yield 0, n, buf[:n].copy()  # the one short window; the encoder pads it
    elif n > win:
        last_end = ((n - win) // hop) * hop + win
        if n - last_end > 0.1 * win:  # as window_bounds: end-aligned last window
            a = n - win - buf_start
            yield n - win, n, buf[a : a + win].copy()


@dataclass
class _Embedded:
    windows: np.ndarray  # (W, D) unit norm
    starts_s: np.ndarray
    ends_s: np.ndarray
    duration_s: float
    silent: bool


def _embed_recordings(
    encoder, sources: Sequence, window_s: float, hop_s: float, block_s: float = BLOCK_S
) -> Iterator[tuple[int, _Embedded | InputFileError]]:
    """Embed each source's windows, batching windows across sources; yields in source order."""
    batch: list[np.ndarray] = []
    owners: list[int] = []
    live: dict[int, dict] = {}
    waiting: list[tuple[int, dict | InputFileError]] = []

    def run_batch() -> None:
        if batch:
            emb = encoder._forward(batch)
            for j, owner in enumerate(owners):
                live[owner]["emb"].append(emb[j])
            batch.clear()
            owners.clear()

    def flush() -> Iterator[tuple[int, _Embedded | InputFileError]]:
        # Called with an empty batch: every waiting recording has all its windows embedded.
        for i, acc in waiting:
            if isinstance(acc, InputFileError):
                yield i, acc
                continue
            live.pop(i, None)
            sr = acc["info"].sample_rate_hz
            yield (
                i,
                _Embedded(
                    np.stack(acc["emb"]).astype(np.float32),
                    np.asarray(acc["starts"], np.float64) / sr,
                    np.asarray(acc["ends"], np.float64) / sr,
                    acc["info"].duration_s,
                    acc["info"].silent,
                ),
            )
        waiting.clear()

    for i, src in enumerate(sources):
        acc = {"info": DecodeInfo(), "starts": [], "ends": [], "emb": []}
        live[i] = acc
        try:
            for a, b, samples in iter_windows(
                src, encoder.sample_rate_hz, window_s, hop_s, acc["info"], block_s
            ):
                acc["starts"].append(a)
                acc["ends"].append(b)
                batch.append(samples)
                owners.append(i)
                if len(batch) >= encoder.batch_size:
                    run_batch()
                    yield from flush()
        except InputFileError as exc:
            keep = [j for j, owner in enumerate(owners) if owner != i]
            batch[:] = [batch[j] for j in keep]
            owners[:] = [owners[j] for j in keep]
            live.pop(i, None)
            waiting.append((i, exc))
        else:
            waiting.append((i, acc))
        if not batch:
            yield from flush()
    run_batch()
    yield from flush()


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
            if _revision_kind(teacher) != _revision_kind(self.gallery.image_model):
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


def _revision_kind(model: dict) -> str:
    return "folder" if str(model.get("revision") or "").startswith("local-") else "hub"


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


# --- output -----------------------------------------------------------------------------------


def results_to_records(results: Sequence[WindowResult]) -> list[dict]:
    """The JSON contract: one dict per recording and window.

    Keys: ``path``, ``start_s``, ``end_s``, ``window`` (None for the whole recording),
    ``answered_by``, ``hits`` (``image``, ``score``, ``image_id``, and ``species``,
    ``label``, ``common_name`` when known), ``species`` (``name``, ``score``, ``rank``,
    ``label``, ``common_name``) and ``error`` when the recording could not be used.
    """
    records = []
    for r in results:
        rec: dict[str, Any] = {
            "path": r.path,
            "start_s": round(float(r.start_s), 6),
            "end_s": round(float(r.end_s), 6),
            "window": r.window,
            "answered_by": r.answered_by,
            "hits": [
                {k: v for k, v in asdict(h).items() if v is not None or k in ("image", "score")}
                for h in r.hits
            ],
            "species": [asdict(s) for s in r.species],
        }
        if r.error is not None:
            rec["error"] = r.error
        records.append(rec)
    return records


def _top(result: WindowResult, rank: str = "species") -> SpeciesScore | None:
    return next((s for s in result.species if s.rank == rank), None)


def format_table(results: Sequence[WindowResult], max_hits: int = 5) -> str:
    """A readable terminal report: the whole recording in full, windows one line each."""
    lines: list[str] = []
    for r in results:
        span = f"{r.start_s:8.2f}-{r.end_s:8.2f} s"
        if r.error is not None:
            lines += ["", f"== {r.path}  ERROR: {r.error}"]
            continue
        if r.window is None:
            lines += ["", f"== {r.path}  {r.end_s:.2f} s  (answered by {r.answered_by})"]
            for rank in ("species", "genus", "family"):
                taxa = [s for s in r.species if s.rank == rank]
                if taxa:
                    text = " | ".join(
                        f"{s.name}{f' ({s.common_name})' if s.common_name and s.common_name != s.name else ''} {s.score:.2f}"
                        for s in taxa
                    )
                    lines.append(f"   {rank:<8} {text}")
            for n, h in enumerate(r.hits[:max_hits], 1):
                lines.append(f"   {n:>3}. {h.score:7.4f}  {h.species or '-':<28} {h.image}")
            continue
        top = _top(r)
        best = r.hits[0] if r.hits else None
        lines.append(
            f"   [{span}]  "
            + (f"{top.name} {top.score:.2f}" if top else "-")
            + (f"  | best photo {best.score:.4f} {best.image}" if best else "")
        )
    return "\n".join(lines).lstrip("\n") + "\n"


CSV_COLUMNS = (
    "path", "window", "start_s", "end_s", "answered_by", "error", "rank", "image_id", "image",
    "score", "species", "label", "top_species", "top_species_score",
)  # fmt: skip


def _csv_rows(results: Sequence[WindowResult]) -> Iterator[dict]:
    for r in results:
        top = _top(r)
        base = {
            "path": r.path,
            "window": "" if r.window is None else r.window,
            "start_s": f"{r.start_s:.6g}",
            "end_s": f"{r.end_s:.6g}",
            "answered_by": r.answered_by,
            "error": r.error or "",
            "top_species": top.name if top else "",
            "top_species_score": f"{top.score:.6g}" if top else "",
        }
        if not r.hits:
            yield {
                **base,
                "rank": "",
                "image_id": "",
                "image": "",
                "score": "",
                "species": "",
                "label": "",
            }
        for n, h in enumerate(r.hits, 1):
            yield {
                **base,
                "rank": n,
                "image_id": h.image_id,
                "image": h.image,
                "score": f"{h.score:.6g}",
                "species": h.species or "",
                "label": "" if h.label is None else h.label,
            }


def write_results(
    results: Sequence[WindowResult],
    fmt: str = "table",
    out: str | Path | None = None,
    provenance: dict | None = None,
) -> None:
    """Write results as ``table``, ``csv`` (one row per hit), ``json`` (`results_to_records`)
    or ``parquet`` (the same records, nested; provenance in the schema metadata).

    ``out`` None writes to stdout (not for parquet).
    """
    if fmt not in OUTPUT_FORMATS:
        raise SongsightError(f"format must be one of {', '.join(OUTPUT_FORMATS)}, not {fmt!r}")
    if fmt == "parquet":
        if out is None:
            raise SongsightError("--format parquet needs --out FILE")
        import pyarrow as pa
        import pyarrow.parquet as pq

        records = results_to_records(results)
        for rec in records:
            rec.setdefault("error", None)
        table = (
            pa.Table.from_pylist(records)
            if records
            else pa.table({"path": pa.array([], pa.string())})
        )
        meta = {b"songsight": json.dumps(provenance or {}, sort_keys=True, default=str).encode()}
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.replace_schema_metadata(meta), out)
        return
    if fmt == "table":
        text = format_table(results)
    elif fmt == "json":
        text = json.dumps(results_to_records(results), indent=1) + "\n"
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(_csv_rows(results))
        text = buf.getvalue()
    if out is None:
        sys.stdout.write(text)
    else:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text, encoding="utf-8")


def write_raven(
    results: Sequence[WindowResult], directory: str | Path, high_freq_hz: float
) -> list[Path]:
    """One Raven selection table per recording: ``DIR/<stem>.selections.txt``, tab-separated.

    One selection per window (the whole recording when it has a single window), with the top
    species and its roll-up score (the best photo's species and score when the gallery has no
    species names). Recordings that failed get no table.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    by_path: dict[str, list[WindowResult]] = {}
    for r in results:
        if r.error is None:
            by_path.setdefault(r.path, []).append(r)
    written, used = [], set()
    for path, rows in by_path.items():
        windows = [r for r in rows if r.window is not None] or [r for r in rows if r.window is None]
        stem = re.sub(r"[^\w.-]+", "_", Path(path).stem).strip("_") or "recording"
        name, n = f"{stem}.selections.txt", 2
        while name in used:
            name, n = f"{stem}_{n}.selections.txt", n + 1
        used.add(name)
        with (directory / name).open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, delimiter="\t", lineterminator="\n")
            w.writerow(RAVEN_COLUMNS)
            for sel, r in enumerate(windows, 1):
                top = _top(r)
                label, score = (
                    (top.name, top.score)
                    if top
                    else (
                        (r.hits[0].species or "", r.hits[0].score) if r.hits else ("", float("nan"))
                    )
                )
                w.writerow(
                    [sel, "Spectrogram 1", 1, f"{r.start_s:.3f}", f"{r.end_s:.3f}", "0.0",
                     f"{high_freq_hz:.1f}", label, f"{score:.4f}"]
                )  # fmt: skip
        written.append(directory / name)
    return written


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
