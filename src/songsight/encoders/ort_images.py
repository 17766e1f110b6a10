"""BioCLIP-2's image tower run by ONNX Runtime, its preprocessing in PIL and numpy: no torch.

The transform is open_clip's eval transform for the checkpoint's ``PreprocessCfg`` (recorded
in the export): ``shortest`` (resize the short side, torchvision's rounding, then centre
crop) or ``squash`` (resize to the square), PIL's bicubic or bilinear resampling as
torchvision applies it to PIL images, then ``/255`` and the mean/std in float32. Tests hold it
equal to open_clip's own transform. Other resize modes (``longest`` pads) are not offered here:
`songsight.encoders.runtime` keeps those on torch.
"""

from __future__ import annotations

import numpy as np

from songsight.encoders.base import l2_normalize
from songsight.encoders.image_batches import BatchedImageEncoder
from songsight.encoders.loading import ResolvedModel
from songsight.encoders.ort_cache import Build, new_session, session_threads

SUPPORTED_RESIZE = ("shortest", "squash")


def square_size(cfg: dict) -> int | None:
    size = cfg["size"]
    if isinstance(size, int):
        return size
    return int(size[0]) if len(size) == 2 and size[0] == size[1] else None


def supported(cfg: dict, preprocess: str) -> bool:
    """Whether `PixelTransform` reproduces open_clip's transform for ``cfg``."""
    mode = "squash" if preprocess == "squash" else cfg.get("resize_mode", "shortest")
    return (
        mode in SUPPORTED_RESIZE
        and square_size(cfg) is not None
        and cfg.get("interpolation", "bicubic") in ("bicubic", "bilinear")
        and cfg.get("mode", "RGB") == "RGB"
    )


class PixelTransform:
    """PIL RGB image -> (3, S, S) float32, as open_clip's eval transform for ``cfg``."""

    def __init__(self, cfg: dict, preprocess: str = "model"):
        from PIL import Image

        self.size = square_size(cfg)
        self.mode = "squash" if preprocess == "squash" else cfg.get("resize_mode", "shortest")
        bilinear = cfg.get("interpolation") == "bilinear"
        self.resample = Image.Resampling.BILINEAR if bilinear else Image.Resampling.BICUBIC
        self.mean = np.asarray(cfg["mean"], np.float32).reshape(3, 1, 1)
        self.std = np.asarray(cfg["std"], np.float32).reshape(3, 1, 1)

    def _resize(self, img):
        s, (w, h) = self.size, img.size
        if self.mode == "squash":
            new = (s, s)
        else:  # torchvision's Resize(int) on a PIL image: short side to s, long side truncated
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(s * long / short)
            new = (s, new_long) if w <= h else (new_long, s)
        return img if new == (w, h) else img.resize(new, self.resample)

    def __call__(self, img) -> np.ndarray:
        img = self._resize(img.convert("RGB") if img.mode != "RGB" else img)
        w, h = img.size
        s = self.size
        if (w, h) != (s, s):  # torchvision's CenterCrop: the offsets rounded half to even
            top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
            img = img.crop((left, top, left + s, top + s))
        x = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / 255.0
        return (x - self.mean) / self.std


class OnnxImageEncoder(BatchedImageEncoder):
    """BioCLIP-2 image embeddings (``embed_images`` / ``iter_images``), (N, 768) float32 unit
    norm, from a cached export. Images only: species names need the torch encoder."""

    def __init__(
        self,
        build: Build,
        resolved: ResolvedModel,
        session=None,
        batch_size: int = 32,
        preprocess: str = "model",
        decode_threads: int = 2,
        threads: int | None = None,
    ):
        import onnxruntime

        cfg = build.info["preprocess_cfg"]
        if not supported(cfg, preprocess):
            raise ValueError(f"preprocessing {cfg} ({preprocess}) runs on torch only")
        self.device = "cpu"
        self.resolved = resolved
        self.preprocess = preprocess
        self.preprocess_cfg = {**cfg, **({"resize_mode": "squash"} if preprocess == "squash" else {})}  # fmt: skip
        self.pixels = PixelTransform(cfg, preprocess)
        self.dim = int(build.info["dim"])
        self.precision = "fp32"
        self.runtime = {"engine": "onnxruntime", "onnxruntime": onnxruntime.__version__}
        self.batch_size = batch_size
        self.decode_threads = decode_threads
        # ``session``: one the caller opened on ``build.model`` already (it checked the file).
        self.session = session or new_session(
            build.model, threads or session_threads(), optimised=True
        )
        self._input = self.session.get_inputs()[0].name

    def _pixel_transform(self) -> PixelTransform:
        return self.pixels

    def _encode(self, pixels: list) -> np.ndarray:
        x = np.ascontiguousarray(np.stack(pixels), dtype=np.float32)
        return l2_normalize(self.session.run(None, {self._input: x})[0])
