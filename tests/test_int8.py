"""``precision="int8"``: dynamically quantised Linear layers on the CPU (`songsight.encoders.int8`).

The reference is the same tiny real-architecture model in fp32: int8 embeddings must stay close
to it (the tolerance is the issue's quality floor, not a measured number), every ``nn.Linear``
must really be replaced, and a store or gallery must refuse int8 vectors among fp32 ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from songsight.errors import ProvenanceMismatchError, SongsightError

MIN_COSINE = 0.98  # the floor for the 1st percentile of cosine to fp32


def plain_linear_layers(module) -> list[str]:
    import torch

    return [n for n, m in module.named_modules() if type(m) is torch.nn.Linear]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list:
    root = tmp_path_factory.mktemp("int8-photos")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        path = root / f"p{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_int8_audio_encoder_quantises_and_stays_close(tiny_models, tiny_audio_encoder):
    from songsight.encoders.biolingual import BioLingualEncoder

    int8 = BioLingualEncoder(tiny_models[0], device="cpu", batch_size=4, precision="int8")
    assert plain_linear_layers(int8.model) == [] and plain_linear_layers(tiny_audio_encoder.model)
    prov = int8.provenance()
    assert prov["precision"] == "int8" and prov["quantization"]["engine"] in ("x86", "fbgemm")
    assert "quantization" not in tiny_audio_encoder.provenance()
    rng = np.random.default_rng(1)
    rate = tiny_audio_encoder.sample_rate_hz
    clips = [(0.3 * rng.standard_normal(int(rate * s)).astype(np.float32), rate) for s in (1, 2, 3)]
    got, want = int8.embed_audio(clips), tiny_audio_encoder.embed_audio(clips)
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert cosine(got, want).min() >= MIN_COSINE
    texts = ["Turdus merula", "a robin singing"]
    assert (
        cosine(int8.embed_texts(texts), tiny_audio_encoder.embed_texts(texts)).min() >= MIN_COSINE
    )


def test_int8_image_encoder_quantises_and_stays_close(tiny_models, tiny_image_encoder, photos):
    from songsight.encoders.bioclip import BioCLIPEncoder

    int8 = BioCLIPEncoder(tiny_models[1], device="cpu", batch_size=4, precision="int8")
    # Attention projections too: no MultiheadAttention (whose projections dynamic quantisation
    # cannot reach) is left in the image tower.
    assert plain_linear_layers(int8._model.visual) == []
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in int8._model.visual.modules())
    n_blocks = len(tiny_image_encoder._model.visual.transformer.resblocks)
    assert int8.provenance()["precision"] == "int8"
    assert int8.provenance()["quantization"]["attention_unpacked"] == n_blocks
    got, want = int8.embed_images(photos), tiny_image_encoder.embed_images(photos)
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert cosine(got, want).min() >= MIN_COSINE
    # Species names go through open_clip's text tower, which stays fp32 (it reads its MLP's
    # weight dtype, which a quantised Linear does not have): the same embeddings as fp32.
    texts = ["Turdus merula", "a robin singing"]
    assert np.array_equal(int8.embed_texts(texts), tiny_image_encoder.embed_texts(texts))


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_linear_attention_computes_what_multihead_attention_does(batch_first, mask):
    from songsight.encoders.attention import LinearAttention, unpack_attention

    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    with torch.no_grad():  # non-zero biases, so a lost bias would show
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    holder = torch.nn.Sequential(mha)
    assert unpack_attention(holder) == 1 and isinstance(holder[0], LinearAttention)
    x = torch.randn(3, 7, 32) if batch_first else torch.randn(7, 3, 32)
    y = torch.randn(x.shape[0], 5, 32) if batch_first else torch.randn(5, x.shape[1], 32)
    attn_mask = {
        None: None,
        "bool": torch.rand(7, 7) > 0.7,  # True = masked out, as MultiheadAttention reads it
        "float": torch.randn(7, 7),
    }[mask]
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask.fill_diagonal_(False)  # every query sees at least itself
    with torch.no_grad():
        want = mha(x, x, x, need_weights=False, attn_mask=attn_mask)[0]
        got, weights = holder[0](x, x, x, need_weights=False, attn_mask=attn_mask)
        assert weights is None and torch.allclose(got, want, atol=1e-5)
        # Cross-attention (query differs from key and value) takes the per-input path.
        want = mha(x, y, y, need_weights=False)[0]
        assert torch.allclose(holder[0](x, y, y)[0], want, atol=1e-5)


def test_int8_encoders_compute_log_mels_in_float32_close_to_the_extractors_float64(tiny_models):
    from songsight.encoders.biolingual import load_clap

    _, features, _, _ = load_clap(tiny_models[0])
    rng = np.random.default_rng(5)
    waves = [0.3 * rng.standard_normal(n).astype(np.float32) for n in (features.max_samples, 900)]
    want = features(waves)
    assert "stft_dtype" not in features.describe()  # fp32 stores keep their provenance
    features.in_float32()
    got = features(waves)
    assert features.describe()["stft_dtype"] == "float32"
    assert got.dtype == want.dtype == torch.float32
    # log-mel in dB: float32 rounding, far below what int8 weights move the embedding.
    assert torch.allclose(got, want, atol=1e-3)


def test_an_int8_audio_store_records_its_engine_and_refuses_fp32_rows(
    tiny_models, tmp_path, capsys
):
    """`songsight embed audio --precision int8`: the store says how its vectors were made (the
    engine, float32 log-mels) and an fp32 run into it is refused, not mixed in."""
    import soundfile as sf

    from songsight.cli import main
    from songsight.encoders.int8_onnx import onnxruntime_available
    from songsight.index.store import load_embeddings

    rng = np.random.default_rng(7)
    clips = []
    for i in range(3):
        clips.append(tmp_path / f"c{i}.wav")
        sf.write(clips[-1], 0.2 * rng.standard_normal(16_000 * (i + 1)).astype(np.float32), 16_000)
    out = tmp_path / "a.parquet"

    def embed(paths, precision):
        return main(["embed", "audio", *map(str, paths), "--out", str(out), "--audio-model",
                     str(tiny_models[0]), "--device", "cpu", "--quiet", "--precision", precision,
                     "--resume"])  # fmt: skip

    assert embed(clips[:2], "int8") == 0
    _, vectors, prov = load_embeddings(out)
    assert prov["precision"] == "int8"
    if onnxruntime_available():  # the whole job on ONNX Runtime: the int8 tower, numpy log-mels
        assert prov["quantization"]["engine"] == "onnxruntime"
        assert prov["runtime"]["engine"] == "onnxruntime"
    else:  # torch's int8, float32 log-mels
        assert prov["preprocessing"]["stft_dtype"] == "float32"
        assert prov["quantization"].get("audio_tower", {}).get("engine") is None
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    capsys.readouterr()
    assert embed(clips[2:], "fp32") == 2
    assert "quantization" in capsys.readouterr().err
    assert len(load_embeddings(out)[1]) == len(vectors)  # nothing of the fp32 run was written


def test_int8_is_refused_off_the_cpu():
    from songsight.encoders.base import autocast_dtype
    from songsight.encoders.int8 import check_int8_device

    with pytest.raises(SongsightError, match="CPU only"):
        check_int8_device("cuda:0")
    check_int8_device("cpu")
    assert autocast_dtype("int8", "cpu") is None
    with pytest.raises(ValueError, match="int8"):
        autocast_dtype("int4", "cpu")


def test_a_gallery_refuses_int8_photos_among_fp32_ones(tiny_models, photos, tmp_path):
    from songsight.gallery import Gallery, build_gallery
    from songsight.gallery.build import add_to_gallery

    out = tmp_path / "g"
    build_gallery(photos[:2], out, image_model=tiny_models[1], progress=False)
    with pytest.raises(ProvenanceMismatchError, match="quantization"):
        add_to_gallery(
            photos[2:], out, image_model=tiny_models[1], precision="int8", progress=False
        )
    assert len(Gallery.open(out)) == 2
    # An int8 gallery takes more int8 photos.
    build_gallery(photos[:2], tmp_path / "q", image_model=tiny_models[1], precision="int8",
                  progress=False)  # fmt: skip
    report = add_to_gallery(
        photos[2:], tmp_path / "q", image_model=tiny_models[1], precision="int8", progress=False
    )
    assert report.n_embedded == 2
