"""BioLingual (transformers ``ClapModel``): audio and text into its 512-d space.

The model's own feature-extractor config (``preprocessor_config.json``, or the
``feature_extractor`` inside ``processor_config.json`` as newer transformers save it) decides
sampling rate, window length, padding mode and mel filter bank; nothing is assumed from
library defaults (``ClapFeatureExtractor()`` defaults to fusion truncation, while BioLingual
is an unfused HTSAT). Log-mel features are
computed in torch (batched, float64 STFT) and tested equal to what transformers' own
``ClapProcessor`` produces for the same audio.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from songsight.encoders.base import (
    autocast_dtype,
    choose_device,
    l2_normalize,
    warn_truncated,
)
from songsight.encoders.loading import ResolvedModel, check_model_folder, resolve_model
from songsight.encoders.windows import DEFAULT_HOP_FRACTION, WindowedAudioEncoder
from songsight.errors import ModelNotFoundError, one_line

__all__ = ["DEFAULT_HOP_FRACTION", "BioLingualEncoder", "ClapFeatures", "load_clap", "pad_window"]


def pad_window(wave: np.ndarray, max_samples: int, padding: str) -> np.ndarray:
    """Pad one (T <= max_samples,) waveform as the extractor's ``padding`` mode does."""
    n, m = len(wave), max_samples
    if n > m:
        raise ValueError(f"window of {n} samples is longer than the model's {m}")
    if n < m:
        if padding == "repeat":
            wave = np.tile(wave, m // n + 1)[:m]
        elif padding == "repeatpad":
            wave = np.tile(wave, m // n)
        wave = np.pad(wave, (0, m - len(wave)))
    return wave


class ClapFeatures:
    """Log-mel features exactly as the model's ``ClapFeatureExtractor`` computes them.

    Only the path for inputs no longer than one window is used: longer recordings are cut
    into windows upstream, so the extractor's random truncation never applies.
    Output: (B, C, frames, mel_bins) float32, C = 4 for fused models, else 1.
    """

    def __init__(self, extractor, fused_model: bool):
        import torch

        self.sample_rate_hz = int(extractor.sampling_rate)
        self.max_samples = int(extractor.nb_max_samples)
        self.n_fft = int(extractor.fft_window_size)
        self.hop = int(extractor.hop_length)
        self.padding = extractor.padding
        self.truncation = extractor.truncation
        self.channels = 4 if fused_model else 1
        if extractor.truncation == "fusion" and not fused_model:
            # Unfused CLAP was trained on rand_trunc features (Slaney filters, one channel);
            # a "fusion" preprocessor beside an unfused model would feed 4 channels and crash.
            warnings.warn(
                "preprocessor says truncation='fusion' but the audio model is unfused; "
                "using the unfused (Slaney filter bank, 1 channel) features",
                stacklevel=2,
            )
            self.truncation = "rand_trunc"
        filters = (
            extractor.mel_filters if self.truncation == "fusion" else extractor.mel_filters_slaney
        )
        self.mel_filters = torch.from_numpy(
            np.asarray(filters, dtype=np.float64)
        )  # (n_freq, n_mel)
        self.window = torch.hann_window(self.n_fft, periodic=True, dtype=torch.float64)
        self.dtype = torch.float64  # the extractor's own; `in_float32` for int8 encoders
        self._on_device = {}

    def in_float32(self) -> None:
        """Compute the STFT in float32: 3x cheaper on a CPU (21 vs 7 ms a 10 s clip at 48 kHz,
        2 threads), for encoders whose model is approximate anyway (int8: cosine to fp32 ~0.9998
        either way). Recorded in `describe`, so a store never mixes the two."""
        import torch

        self.dtype = torch.float32
        self._on_device = {}

    def _constants(self, device: str):
        """(window, mel filters) on ``device``, copied there once."""
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = (
                self.window.to(device, self.dtype), self.mel_filters.to(device, self.dtype)
            )  # fmt: skip
        return self._on_device[key]

    def describe(self) -> dict:
        return {
            "sample_rate_hz": self.sample_rate_hz,
            "window_samples": self.max_samples,
            "padding": self.padding,
            "truncation": self.truncation,
            "channels": self.channels,
            "n_fft": self.n_fft,
            "hop_length": self.hop,
            "n_mels": int(self.mel_filters.shape[1]),
            # Only when not the extractor's float64, so stores written before this key keep
            # matching their fp32 encoders.
            **({"stft_dtype": "float32"} if str(self.dtype) == "torch.float32" else {}),
        }

    def pad(self, wave: np.ndarray) -> np.ndarray:
        return pad_window(wave, self.max_samples, self.padding)

    def __call__(self, waves: Sequence[np.ndarray], device: str = "cpu"):
        """(B, C, frames, mels) float32 on ``device``, computed there (float64, as the
        extractor, unless `in_float32`)."""
        import torch

        window, mel_filters = self._constants(device)
        # The STFT runs on the model's device: on a GPU, log-mels on the host took ~60% of a
        # distillation step (benchmarks/distill_speed.py on an H200).
        dtype = np.float64 if self.dtype == torch.float64 else np.float32
        batch = torch.from_numpy(np.stack([self.pad(np.asarray(w, dtype=dtype)) for w in waves]))
        if str(device).startswith("cuda"):  # pinned, so the copy overlaps the host's next work
            batch = batch.pin_memory()
        batch = batch.to(device, non_blocking=True)
        spec = (
            torch.stft(
                batch,
                self.n_fft,
                self.hop,
                window=window,
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )
            .abs()
            .pow(2)
        )  # (B, F, frames)
        mel = torch.einsum("bft,fm->btm", spec, mel_filters).clamp_min(1e-10)
        feats = (10.0 * torch.log10(mel)).to(torch.float32).unsqueeze(1)  # (B, 1, frames, mel)
        if self.channels == 4:
            feats = feats.expand(-1, 4, -1, -1)
        return feats


# transformers' placeholder for "no limit" (VERY_LARGE_INTEGER is int(1e30)); Hub tokenizers
# without a model_max_length carry it.
_NO_LIMIT = 10**12


def text_token_limit(tokenizer, text_config) -> int:
    """Tokens the CLAP text tower takes: its position table less RoBERTa's padding offset
    (positions start at ``pad_token_id + 1``), or the tokenizer's ``model_max_length`` when it
    declares a smaller real one. BioLingual: min(512, 514 - 2) = 512."""
    pad = text_config.pad_token_id if text_config.pad_token_id is not None else 1
    limit = int(text_config.max_position_embeddings) - (int(pad) + 1)
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < _NO_LIMIT:
        limit = min(limit, declared)
    return max(2, limit)


def load_clap(model: str | Path | ResolvedModel, device: str = "cpu"):
    """Load (ClapModel in eval mode, ClapFeatures, tokenizer, ResolvedModel) from local files."""
    from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    resolved = model if isinstance(model, ResolvedModel) else resolve_model(str(model), "audio")
    # Resolved models skip resolve_model's check when built by hand (the distilled checkpoint's
    # clap/ folder): check here, so every caller gets the same one-line refusal.
    check_model_folder(resolved.path, "audio")
    try:
        clap = ClapModel.from_pretrained(resolved.path)
        # Reads preprocessor_config.json or, failing that, processor_config.json's nested
        # feature_extractor: both layouts transformers writes.
        extractor = ClapFeatureExtractor.from_pretrained(resolved.path)
        tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    except Exception as exc:  # safetensors, json, torch each raise their own types
        raise ModelNotFoundError(
            f"{resolved.path}: transformers could not load it as a CLAP model: {one_line(exc)}"
        ) from None
    clap = clap.eval().to(device)
    feats = ClapFeatures(extractor, bool(clap.config.audio_config.enable_fusion))
    return clap, feats, tokenizer, resolved


class BioLingualEncoder(WindowedAudioEncoder):
    """BioLingual audio and text embeddings: ``embed_audio`` / ``embed_clips`` / ``embed_texts``.

    ``window_s`` defaults to the model's own window (10 s for BioLingual) and ``hop_s`` to half
    of it. Recordings shorter than a window are padded as the model's preprocessor says
    (repeat-pad for BioLingual); longer ones are cut into windows.
    """

    name = "biolingual"

    def __init__(
        self,
        model: str | Path | ResolvedModel = "davidrrobinson/BioLingual",
        device: str | None = None,
        batch_size: int | None = None,
        window_s: float | None = None,
        hop_s: float | None = None,
        precision: str = "auto",
        decode_threads: int | None = None,
    ):
        """``decode_threads``: see `WindowedAudioEncoder.set_windows`."""
        if not isinstance(model, ResolvedModel):
            model = resolve_model(
                str(model), "audio"
            )  # a missing model fails before any device notice
        self.device = choose_device(device)
        self.model, self.features, self.tokenizer, self.resolved = load_clap(model, self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.set_windows(self.features, window_s, hop_s, batch_size, decode_threads)
        self.autocast = autocast_dtype(precision, self.device)
        self.precision = "bf16" if self.autocast is not None else "fp32"
        self.quantization = None
        self._onnx_audio = None
        if precision == "int8":
            from songsight.encoders.int8 import check_int8_device
            from songsight.encoders.int8_cache import load_or_quantize_int8

            check_int8_device(self.device)
            # The audio tower through ONNX Runtime when it is installed (exported from the fp32
            # model, so before torch quantises it in place); the text tower on torch's int8.
            from songsight.encoders.int8_onnx import int8_audio_tower

            self._onnx_audio, onnx_info = int8_audio_tower(self.model, self.features, self.resolved)
            self.model, self.quantization = load_or_quantize_int8(self.model, self.resolved, "clap")
            self.features.in_float32()
            if onnx_info is not None:
                self.quantization = {**self.quantization, "audio_tower": onnx_info}
            self.precision = "int8"
        self.dim = self._output_dim()
        self.max_text_tokens = text_token_limit(self.tokenizer, self.model.config.text_config)

    # --- what subclasses (the distilled encoder) change -------------------------------------
    def _output_dim(self) -> int:
        return int(self.model.config.projection_dim)

    def _embed_features(self, feats):
        """(B, C, frames, mel) features -> (B, D) unnormalised audio embeddings (torch)."""
        if self._onnx_audio is not None:
            return self._onnx_audio(feats)
        pooled = self.model.audio_model(input_features=feats).pooler_output
        return self.model.audio_projection(pooled)

    # --- audio ----------------------------------------------------------------------------
    def _forward(self, windows: list[np.ndarray]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(windows), self.batch_size):
                feats = self.features(windows[i : i + self.batch_size], self.device)
                with torch.autocast(
                    self.device.split(":")[0],
                    dtype=self.autocast,
                    enabled=self.autocast is not None,
                ):
                    rows = self._window_rows(feats)
                out.append(rows.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self._row_width()), np.float32)

    def _window_rows(self, feats):
        """What `_forward` keeps of a batch of features: here the unit-norm audio embedding."""
        return l2_normalize(self._embed_features(feats).float())

    def _row_width(self) -> int:
        return self.dim

    # --- text ------------------------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(N, 512) float32 unit norm text embeddings in BioLingual's space.

        Texts longer than the text tower takes (`max_text_tokens`) are cut to fit, with one
        warning per encoder; any string embeds (empty, any script, any length).
        """
        import torch

        texts = [str(t) for t in texts]
        limit = self.max_text_tokens
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                batch = texts[i : i + batch_size]
                # One token over the limit marks a text that the real call below cuts.
                probe = self.tokenizer(batch, truncation=True, max_length=limit + 1)["input_ids"]
                warn_truncated(
                    self,
                    [t for t, ids in zip(batch, probe, strict=True) if len(ids) > limit],
                    limit,
                )
                tok = self.tokenizer(
                    batch, padding=True, truncation=True, max_length=limit, return_tensors="pt"
                ).to(self.device)
                pooled = self.model.text_model(
                    input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]
                ).pooler_output
                out.append(l2_normalize(self.model.text_projection(pooled).float()).cpu().numpy())
        return (
            np.concatenate(out)
            if out
            else np.zeros((0, int(self.model.config.projection_dim)), np.float32)
        )
