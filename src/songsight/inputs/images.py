"""Image input: open any photo a user has and hand back an RGB PIL image.

EXIF orientation is applied; RGBA/LA/P (transparent) are composited on white; grayscale,
CMYK and 16-bit images are converted to 8-bit RGB. Unusable files raise `InputFileError`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from songsight.errors import InputFileError, require_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")

# Refuse decompression bombs with a clear error instead of PIL's warning.
MAX_PIXELS = 200_000_000


def to_rgb(img) -> Image.Image:  # noqa: F821
    """Any PIL mode -> 8-bit RGB (alpha composited over white)."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size and arr.max() > 0 else 1.0
        scale = 65535.0 if hi > 255 else 255.0
        img = Image.fromarray(np.clip(arr / scale * 255.0, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        img = Image.fromarray(((arr - lo) / (hi - lo or 1.0) * 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_image(path: str | Path):
    """Open a photo file as RGB. Raises `InputFileError` with a readable reason."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    name = require_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise InputFileError(
                        name,
                        f"image is {img.width}x{img.height}, over the {MAX_PIXELS:,} pixel limit",
                    )
                img.load()
                return to_rgb(img)
    except InputFileError:
        raise
    except UnidentifiedImageError:
        raise InputFileError(name, "not an image file (format not recognised)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputFileError(name, "image too large (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputFileError(name, f"corrupt image ({str(exc)[:200]})") from None
