"""BioLingual's audio tower run by ONNX Runtime, with its log-mel features in numpy: no torch.

The features are `songsight.encoders.biolingual.ClapFeatures`' (the model's own
``ClapFeatureExtractor`` settings: periodic Hann window, centred reflect-padded STFT in float64,
power, the cached Slaney mel filter bank, ``10 log10`` floored at 1e-10), computed with numpy's
FFT; tests hold them to the torch features within 1e-3 dB. The tower is the cached fp32 export
(`songsight.encoders.ort_cache`), so embeddings are the torch encoder's to float32 rounding,
and stores written by either share rows (their provenance differs only in ``runtime``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from songsight.encoders.base import l2_normalize
from songsight.encoders.biolingual import pad_window
from songsight.encoders.loading import ResolvedModel
from songsight.encoders.ort_cache import Build, new_session, session_threads
from songsight.encoders.windows import WindowedAudioEncoder


class NumpyLogMel:
    """(B, C, frames, mels) float32 log-mel features from 1-D waveforms, as `ClapFeatures`."""

    def __init__(self, described: dict, mel_filters: np.ndarray):
        self._described = dict(described)
        self.sample_rate_hz = int(described["sample_rate_hz"])
        self.max_samples = int(described["window_samples"])
        self.padding = described["padding"]
        self.channels = int(described["channels"])
        self.n_fft = int(described["n_fft"])
        self.hop = int(described["hop_length"])
        self.mel_filters = np.asarray(mel_filters, np.float64)  # (n_freq, n_mel)
        n = np.arange(self.n_fft)
        self.window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / self.n_fft)  # periodic Hann
        if described.get("stft_dtype", "float64") != "float64":
            raise ValueError("the fp32 export's features are float64 STFTs")

    def describe(self) -> dict:
        return dict(self._described)

    def one(self, wave: np.ndarray) -> np.ndarray:
        """(frames, mels) float32 for one waveform of at most one window."""
        x = pad_window(np.asarray(wave, np.float64), self.max_samples, self.padding)
        half = self.n_fft // 2
        x = np.pad(x, (half, half), mode="reflect")  # torch.stft(center=True, pad_mode="reflect")
        frames = np.lib.stride_tricks.sliding_window_view(x, self.n_fft)[:: self.hop]
        power = np.abs(np.fft.rfft(frames * self.window, axis=-1)) ** 2  # (frames, n_freq)
        mel = np.maximum(power @ self.mel_filters, 1e-10)
        return (10.0 * np.log10(mel)).astype(np.float32)

    def __call__(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        feats = np.stack([self.one(w) for w in waves])[:, None]
        return np.ascontiguousarray(np.repeat(feats, self.channels, axis=1))


class OnnxAudioEncoder(WindowedAudioEncoder):
    """BioLingual audio embeddings (``embed_audio`` / ``embed_clips`` / ``embed_windows``),
    (N, 512) float32 unit norm, from a cached export. Audio only: text needs the torch encoder."""

    def __init__(
        self,
        build: Build,
        resolved: ResolvedModel,
        session=None,
        batch_size: int = 16,
        window_s: float | None = None,
        hop_s: float | None = None,
        decode_threads: int | None = None,
        threads: int | None = None,
    ):
        import onnxruntime

        self.device = "cpu"
        self.resolved = resolved
        self.features = NumpyLogMel(build.info["features"], build.arrays["mel_filters"])
        self.dim = int(build.info["dim"])
        # an int8 build (`songsight.encoders.ort_cache.build_audio_int8`) says so in its info
        self.precision = build.info.get("precision", "fp32")
        self.quantization = build.info.get("quantization")
        self.runtime = {"engine": "onnxruntime", "onnxruntime": onnxruntime.__version__}
        # ``session``: one the caller opened on ``build.model`` already (it checked the file).
        self.session = session or new_session(
            build.model, threads or session_threads(), optimised=True
        )
        self._input = self.session.get_inputs()[0].name
        self.set_windows(self.features, window_s, hop_s, batch_size, decode_threads)

    def _forward(self, windows: list[np.ndarray]) -> np.ndarray:
        out = []
        for i in range(0, len(windows), self.batch_size):
            out.append(self._window_rows(self.features(windows[i : i + self.batch_size])))
        return np.concatenate(out) if out else np.zeros((0, self._row_width()), np.float32)

    def _window_rows(self, feats: np.ndarray) -> np.ndarray:
        """What `_forward` keeps of a batch of log-mels: here the unit-norm audio embedding."""
        return l2_normalize(self._tower(feats))

    def _tower(self, feats: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: feats})[0].astype(np.float32)

    def _row_width(self) -> int:
        return self.dim
