"""Every photo a user may have comes back as 8-bit RGB with the pixels it should have."""

from __future__ import annotations

import numpy as np
from PIL import Image

from songsight.inputs.images import load_image, to_rgb
from tests.helpers import expect_input_error

RED, BLUE = (220, 20, 20), (20, 20, 220)


def rgb(path) -> np.ndarray:
    img = load_image(path)
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


def close(pixel, expected, tol: int = 12) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int) - np.asarray(expected, int)) <= tol))


def test_exif_orientation_is_applied(tmp_path):
    # Stored 64 wide x 32 high: left half red, right half blue. Orientation 6 says
    # "rotate 90 degrees clockwise to display", so the displayed photo is 32 x 64 with red on top.
    stored = Image.new("RGB", (64, 32), BLUE)
    stored.paste(RED, (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif, quality=95)
    img = load_image(path)
    assert img.size == (32, 64)
    arr = np.asarray(img).astype(int)
    assert close(arr[8, 16], RED) and close(arr[56, 16], BLUE)
    # No tag: unchanged.
    plain = tmp_path / "plain.jpg"
    stored.save(plain, quality=95)
    assert load_image(plain).size == (64, 32)


def test_rgba_transparent_becomes_white(tmp_path):
    arr = np.zeros((16, 16, 4), np.uint8)
    arr[..., :3] = (10, 150, 40)
    arr[:8, :, 3] = 0  # top half fully transparent
    arr[8:12, :, 3] = 255  # opaque
    arr[12:, :, 3] = 128  # half transparent: blended with white
    path = tmp_path / "alpha.png"
    Image.fromarray(arr, "RGBA").save(path)
    out = rgb(path)
    assert close(out[0, 0], (255, 255, 255), 0)
    assert close(out[9, 9], (10, 150, 40), 0)
    expected = [round(c * 128 / 255 + 255 * 127 / 255) for c in (10, 150, 40)]
    assert close(out[14, 3], expected, 1)


def test_la_image_with_alpha(tmp_path):
    arr = np.zeros((8, 8, 2), np.uint8)
    arr[..., 0] = 60
    arr[:, :4, 1] = 255
    path = tmp_path / "la.png"
    Image.fromarray(arr, "LA").save(path)
    out = rgb(path)
    assert close(out[0, 0], (60, 60, 60), 0) and close(out[0, 7], (255, 255, 255), 0)


def test_grayscale_l(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (8, 8), 77).save(path)
    out = rgb(path)
    assert out.shape == (8, 8, 3) and (out == 77).all()


def test_palette_p_with_and_without_transparency(tmp_path):
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    img.paste(0, (0, 0, 4, 8))
    path = tmp_path / "palette.png"
    img.save(path)
    out = rgb(path)
    assert close(out[0, 0], (0, 0, 0), 0) and close(out[0, 7], (10, 200, 30), 0)
    # Index 0 transparent: those pixels become white, the rest keep their colour.
    transparent = tmp_path / "palette-t.png"
    img.save(transparent, transparency=0)
    out = rgb(transparent)
    assert close(out[0, 0], (255, 255, 255), 0) and close(out[0, 7], (10, 200, 30), 0)


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # pure red in print inks
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    out = rgb(path)
    assert close(out[8, 8], (255, 0, 0))


def test_16bit_grayscale_png(tmp_path):
    ramp = np.linspace(0, 65535, 64, dtype=np.float64).round().astype(np.uint16).reshape(8, 8)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    out = rgb(path)
    expected = (ramp.astype(float) / 65535 * 255).astype(int)
    np.testing.assert_allclose(out[..., 0], expected, atol=1)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert out.min() == 0 and out.max() == 255  # full range, not clipped to white


def test_float_mode_is_stretched():
    img = Image.fromarray(np.array([[0.0, 0.5], [1.0, 2.0]], np.float32), "F")
    out = np.asarray(to_rgb(img)).astype(int)
    assert out[0, 0, 0] == 0 and out[1, 1, 0] == 255


def test_in_memory_image_is_converted_too():
    out = to_rgb(Image.new("RGBA", (4, 4), (0, 0, 0, 0)))
    assert out.mode == "RGB" and (np.asarray(out) == 255).all()


def test_truncated_jpeg(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        good
    )
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    expect_input_error(load_image, bad, "corrupt image")


def test_garbage_after_png_signature(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    expect_input_error(load_image, path, "not an image|corrupt")


def test_empty_text_and_missing(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    expect_input_error(load_image, empty, "empty file")
    text = tmp_path / "notes.png"
    text.write_text("not a photo")
    expect_input_error(load_image, text, "not an image file")
    expect_input_error(load_image, tmp_path / "nowhere.jpg", "not found")


def test_decompression_bomb_guard(tmp_path, monkeypatch):
    from songsight.inputs import images

    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 5_000)
    expect_input_error(load_image, path, "pixel limit")
