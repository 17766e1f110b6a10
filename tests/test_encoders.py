"""Encoders against the libraries' own reference paths, on tiny real-architecture models.

BioLingual features and embeddings are checked against transformers' ``ClapProcessor`` and
``ClapModel.get_audio_features``; BioCLIP-2 against a naive open_clip loop.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from songsight.encoders.base import AudioEncoder, ImageEncoder, TextEncoder
from songsight.errors import InputFileError
from songsight.prompt_templates import TEMPLATE_SETS
from songsight.taxonomy import Species
from tests.helpers import write_noise_photo

RATE = 16_000  # the tiny CLAP's sampling rate; its window is 2 s (32,000 samples)


def noise(n: int, seed: int, amp: float = 0.1) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def chirp(n: int, rate: int = RATE, f0: float = 500.0, f1: float = 4000.0) -> np.ndarray:
    t = np.arange(n) / rate
    return (0.3 * np.sin(2 * np.pi * (f0 + (f1 - f0) * t / t[-1] / 2) * t)).astype(np.float32)


def assert_unit_float32(x: np.ndarray, n: int, dim: int) -> None:
    assert x.dtype == np.float32 and x.shape == (n, dim)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def clap_reference(tiny_models):
    """transformers' own processor and model, loaded independently of songsight."""
    from transformers import ClapFeatureExtractor, ClapModel, ClapProcessor

    path = tiny_models[0]
    model = ClapModel.from_pretrained(path).eval()
    return ClapProcessor.from_pretrained(path), ClapFeatureExtractor.from_pretrained(path), model


@pytest.fixture(scope="module")
def open_clip_reference(tiny_models):
    import open_clip

    spec = f"local-dir:{tiny_models[1]}"
    model, _, preprocess = open_clip.create_model_and_transforms(spec)
    return model.eval(), preprocess, open_clip.get_tokenizer(spec)


def test_encoders_follow_protocols(tiny_audio_encoder, tiny_image_encoder):
    assert isinstance(tiny_audio_encoder, AudioEncoder) and isinstance(
        tiny_audio_encoder, TextEncoder
    )
    assert isinstance(tiny_image_encoder, ImageEncoder) and isinstance(
        tiny_image_encoder, TextEncoder
    )
    assert tiny_audio_encoder.sample_rate_hz == RATE and tiny_audio_encoder.window_s == 2.0
    assert tiny_audio_encoder.hop_s == 1.0


def test_outputs_are_float32_unit_norm(tiny_audio_encoder, tiny_image_encoder):
    a, i = tiny_audio_encoder, tiny_image_encoder
    clips = [noise(12_000, 0), noise(32_000, 1), noise(70_000, 2), chirp(5_000)]
    assert_unit_float32(a.embed_audio(clips, sample_rate_hz=RATE), 4, a.dim)
    assert_unit_float32(a.embed_texts(["a bird singing", "a chirp", "Canada Goose"]), 3, a.dim)
    assert_unit_float32(i.embed_texts(["a bird singing", "Canada Goose"]), 2, i.dim)
    imgs = [Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("L", (20, 50), 90)]
    assert_unit_float32(i.embed_images(imgs), 2, i.dim)
    # Empty inputs give (0, D), not an error.
    assert a.embed_audio([]).shape == (0, a.dim) and a.embed_texts([]).shape == (0, a.dim)
    assert i.embed_images([]).shape == (0, i.dim) and i.embed_texts([]).shape == (0, i.dim)


@pytest.mark.parametrize(
    "n_samples",
    [32_000, 12_345, 15_999, 16_000, 3_000, 31_999],  # exact window; repeat-padded shorter clips
)
def test_features_equal_transformers_extractor(tiny_audio_encoder, clap_reference, n_samples):
    processor, extractor, _ = clap_reference
    wave = noise(n_samples, seed=n_samples)
    ours = tiny_audio_encoder.features([wave]).numpy()
    ref_proc = processor(audio=[wave], sampling_rate=RATE, return_tensors="np")["input_features"]
    ref_ext = extractor([wave], sampling_rate=RATE, return_tensors="np")["input_features"]
    assert ours.shape == ref_proc.shape == ref_ext.shape
    np.testing.assert_allclose(ours, ref_proc, atol=1e-4)  # dB values
    np.testing.assert_allclose(ours, ref_ext, atol=1e-4)


def test_features_of_silence_and_batches(tiny_audio_encoder, clap_reference):
    _, extractor, _ = clap_reference
    waves = [np.zeros(20_000, np.float32), noise(9_000, 3), chirp(32_000)]
    ours = tiny_audio_encoder.features(waves).numpy()
    ref = extractor(waves, sampling_rate=RATE, return_tensors="np")["input_features"]
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert ours.shape[0] == 3


def test_repeatpad_matches_definition(tiny_audio_encoder):
    wave = np.arange(1, 12_001, dtype=np.float64)
    padded = tiny_audio_encoder.features.pad(wave)
    # 12,000 samples fit twice in 32,000; the rest is zeros.
    np.testing.assert_array_equal(padded[:24_000], np.tile(wave, 2))
    assert not padded[24_000:].any() and len(padded) == 32_000
    with pytest.raises(ValueError):
        tiny_audio_encoder.features.pad(np.zeros(32_001))


def reference_audio_embedding(clap_reference, waves) -> np.ndarray:
    processor, _, model = clap_reference
    inputs = processor(audio=waves, sampling_rate=RATE, return_tensors="pt")
    with torch.no_grad():
        out = model.get_audio_features(**inputs)
    # transformers 5 returns an output object; 4.x returned the tensor.
    pooled = out.pooler_output if hasattr(out, "pooler_output") else out
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@pytest.mark.parametrize("n_samples", [32_000, 20_000, 4_321])
def test_embedding_equals_clap_model(tiny_audio_encoder, clap_reference, n_samples):
    wave = chirp(n_samples)
    ours = tiny_audio_encoder.embed_audio([wave], sample_rate_hz=RATE)
    np.testing.assert_allclose(ours, reference_audio_embedding(clap_reference, [wave]), atol=1e-5)


def test_batch_of_short_clips_equals_clap_model(tiny_audio_encoder, clap_reference):
    waves = [noise(n, n) for n in (32_000, 9_000, 27_000, 1_000, 16_000)]
    ours = tiny_audio_encoder.embed_audio(waves, sample_rate_hz=RATE)
    np.testing.assert_allclose(ours, reference_audio_embedding(clap_reference, waves), atol=1e-5)


def test_text_embedding_equals_clap_model(tiny_audio_encoder, clap_reference):
    _, _, model = clap_reference
    texts = ["a bird singing", "Common Raven call", "the sound of a Canada Goose in the distance"]
    tok = tiny_audio_encoder.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.get_text_features(
            input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]
        )
    pooled = out.pooler_output if hasattr(out, "pooler_output") else out
    ref = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    np.testing.assert_allclose(tiny_audio_encoder.embed_texts(texts), ref, atol=1e-5)
    # Padding in a batch does not change a caption's vector.
    alone = tiny_audio_encoder.embed_texts(texts[:1])
    np.testing.assert_allclose(alone[0], tiny_audio_encoder.embed_texts(texts)[0], atol=1e-5)


def test_long_clip_windows_times_and_mean(tiny_audio_encoder):
    enc = tiny_audio_encoder
    wave = chirp(88_000)  # 5.5 s: windows at 0,1,2,3 s and a tail window 3.5-5.5 s
    (res,) = enc.embed_clips([(wave, RATE)])
    np.testing.assert_allclose(res.starts_s, [0.0, 1.0, 2.0, 3.0, 3.5])
    np.testing.assert_allclose(res.ends_s, [2.0, 3.0, 4.0, 5.0, 5.5])
    assert res.duration_s == pytest.approx(5.5) and not res.silent
    assert_unit_float32(res.windows, 5, enc.dim)
    # Each window is what embedding that slice alone gives.
    slices = [
        wave[int(a * RATE) : int(b * RATE)] for a, b in zip(res.starts_s, res.ends_s, strict=True)
    ]
    np.testing.assert_allclose(res.windows, enc.embed_audio(slices, sample_rate_hz=RATE), atol=1e-5)
    mean = res.windows.mean(axis=0)
    np.testing.assert_allclose(res.clip, mean / np.linalg.norm(mean), atol=1e-6)
    np.testing.assert_allclose(enc.embed_audio([wave], sample_rate_hz=RATE)[0], res.clip, atol=1e-6)
    # Another window and hop for this call only.
    (res2,) = enc.embed_clips([(wave, RATE)], window_s=1.0, hop_s=1.0)
    # The 0.5 s tail is over a tenth of a window: it gets its own window.
    np.testing.assert_allclose(res2.starts_s, [0, 1, 2, 3, 4, 4.5])
    np.testing.assert_allclose(res2.ends_s, [1, 2, 3, 4, 5, 5.5])
    with pytest.raises(ValueError, match="exceeds"):
        enc.embed_clips([(wave, RATE)], window_s=3.0)


def test_one_window_rule_for_every_caller(tiny_audio_encoder, tmp_path):
    """A window asked without a hop steps by half of it, whoever asks: the encoder, the embed
    job (its store records it) and the searcher share `BioLingualEncoder.windowing`."""
    import soundfile as sf

    from songsight.index.store import load_embeddings
    from songsight.jobs.embed import embed_audio_files

    enc = tiny_audio_encoder
    assert enc.windowing() == (enc.window_s, enc.hop_s) == (2.0, 1.0)
    assert enc.windowing(1.0) == (1.0, 0.5) and enc.windowing(1.0, 0.25) == (1.0, 0.25)
    wave = chirp(48_000)  # 3 s
    (res,) = enc.embed_clips([(wave, RATE)], window_s=1.0)
    np.testing.assert_allclose(res.starts_s, [0.0, 0.5, 1.0, 1.5, 2.0])
    sf.write(tmp_path / "a.wav", wave, RATE)
    embed_audio_files(
        [tmp_path / "a.wav"], tmp_path / "a.parquet", enc, window_s=1.0, progress=False
    )
    meta, _, prov = load_embeddings(tmp_path / "a.parquet")
    np.testing.assert_allclose(meta["start_s"], res.starts_s)
    assert prov["preprocessing"]["hop_s"] == 0.5
    with pytest.raises(ValueError, match="exceeds"):
        enc.windowing(3.0)


def test_batch_invariance(tiny_audio_encoder, tmp_path):
    paths = []
    for k, n in enumerate([50_000, 7_000, 32_000, 70_000, 3_000]):  # 9 windows over 3 batches of 4
        p = tmp_path / f"clip{k}.wav"
        sf.write(p, chirp(n, f0=300 + 200 * k) + noise(n, k, 0.02), RATE, subtype="FLOAT")
        paths.append(p)
    together = tiny_audio_encoder.embed_audio(paths)
    for k, p in enumerate(paths):
        alone = tiny_audio_encoder.embed_audio([p])
        np.testing.assert_allclose(alone[0], together[k], atol=1e-5)


def test_bare_waveforms_at_any_rate(tiny_audio_encoder, tmp_path):
    import soxr

    enc = tiny_audio_encoder
    for rate in (8_000, 22_050, 48_000):
        wave = chirp(int(1.5 * rate), rate)
        bare = enc.embed_audio([wave], sample_rate_hz=rate)
        tup = enc.embed_audio([(wave, rate)])
        manual = enc.embed_audio(
            [soxr.resample(wave, rate, RATE, quality="HQ")], sample_rate_hz=RATE
        )
        np.testing.assert_allclose(bare, tup, atol=1e-6)
        np.testing.assert_allclose(bare, manual, atol=1e-5)
    # A file at 22,050 Hz decodes to the same vector as the same samples in memory.
    wave = chirp(30_000, 22_050)
    path = tmp_path / "c.wav"
    sf.write(path, wave, 22_050, subtype="FLOAT")
    np.testing.assert_allclose(
        enc.embed_audio([path]), enc.embed_audio([wave], sample_rate_hz=22_050), atol=1e-6
    )
    with pytest.raises(ValueError, match="sample_rate_hz"):
        enc.embed_audio([wave])


def test_bad_sources_are_reported_in_place(tiny_audio_encoder, tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, chirp(20_000), RATE)
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(10_000, np.float32), RATE)
    results = dict(tiny_audio_encoder.embed_windows([good, bad, silent, good]))
    assert sorted(results) == [0, 1, 2, 3]
    assert isinstance(results[1], InputFileError) and results[1].path == str(bad)
    assert results[2].silent and results[2].flags == ["silent"]
    np.testing.assert_allclose(results[0].clip, results[3].clip, atol=1e-6)
    with pytest.raises(InputFileError):
        tiny_audio_encoder.embed_audio([good, bad])


def test_parallel_decoding_keeps_order_and_results(tiny_audio_encoder, tiny_models, tmp_path):
    """Several decode threads give the same results, in input order, as one thread."""
    from songsight.encoders.biolingual import BioLingualEncoder

    paths = []
    for i in range(9):
        p = tmp_path / f"{i}.wav"
        if i == 4:
            p.write_text("not audio")
        else:
            sf.write(p, chirp(8_000 + 3_000 * i), RATE)
        paths.append(p)
    threaded = BioLingualEncoder(tiny_models[0], device="cpu", batch_size=4, decode_threads=4)
    assert threaded.decode_threads == 4 and tiny_audio_encoder.decode_threads == 1
    one = list(tiny_audio_encoder.embed_windows(paths))
    many = list(threaded.embed_windows(paths))
    assert [i for i, _ in many] == [i for i, _ in one] == list(range(9))
    for (_, a), (_, b) in zip(one, many, strict=True):
        if isinstance(a, InputFileError):
            assert isinstance(b, InputFileError) and b.path == a.path
        else:
            np.testing.assert_allclose(a.windows, b.windows, atol=1e-6)


def test_audio_provenance(tiny_audio_encoder, tiny_models):
    prov = tiny_audio_encoder.provenance()
    assert prov["encoder"] == "biolingual" and prov["kind"] == "audio" and prov["dim"] == 32
    assert prov["model_id"] == str(tiny_models[0].resolve()) and prov["revision"].startswith(
        "local-"
    )
    pre = prov["preprocessing"]
    assert (
        pre["sample_rate_hz"] == RATE
        and pre["window_samples"] == 32_000
        and pre["padding"] == "repeatpad"
    )
    assert pre["window_s"] == 2.0 and pre["hop_s"] == 1.0 and pre["channels"] == 1


def test_audio_encoder_parameters_frozen(tiny_audio_encoder):
    assert not any(p.requires_grad for p in tiny_audio_encoder.model.parameters())


def test_window_longer_than_model_is_refused(tiny_models):
    from songsight.encoders.biolingual import BioLingualEncoder

    with pytest.raises(ValueError, match="exceeds"):
        BioLingualEncoder(tiny_models[0], device="cpu", window_s=2.5)


# --- BioCLIP-2 -----------------------------------------------------------------------------


def write_photos(folder) -> list:
    rng = np.random.default_rng(7)
    paths = []
    for k, (w, h) in enumerate([(64, 48), (32, 32), (20, 90), (100, 40), (33, 47)]):
        paths.append(write_noise_photo(folder / f"photo{k}.png", rng, (w, h)))
    return paths


def test_image_encoder_matches_naive_open_clip(tiny_image_encoder, open_clip_reference, tmp_path):
    model, preprocess, _ = open_clip_reference
    paths = write_photos(tmp_path)
    ref = []
    with torch.no_grad():
        for p in paths:
            with Image.open(p) as img:
                x = preprocess(img.convert("RGB")).unsqueeze(0)
            ref.append(torch.nn.functional.normalize(model.encode_image(x), dim=-1)[0].numpy())
    ours = tiny_image_encoder.embed_images(paths)  # 5 photos, batch size 4: two batches
    np.testing.assert_allclose(ours, np.stack(ref), atol=1e-5)
    # PIL images in, the same vectors out.
    pil = [Image.open(p).convert("RGB") for p in paths]
    np.testing.assert_allclose(tiny_image_encoder.embed_images(pil), ours, atol=1e-6)


def test_image_batch_invariance_and_errors(tiny_image_encoder, tmp_path):
    paths = write_photos(tmp_path)
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    mixed = [paths[0], bad, *paths[1:]]
    results = dict(tiny_image_encoder.iter_images(mixed))
    assert sorted(results) == list(range(len(mixed)))
    assert isinstance(results[1], InputFileError)
    for k, p in enumerate(paths):
        j = 0 if k == 0 else k + 1
        np.testing.assert_allclose(results[j], tiny_image_encoder.embed_images([p])[0], atol=1e-5)
    with pytest.raises(InputFileError):
        tiny_image_encoder.embed_images(mixed)


def test_photos_prepared_in_worker_processes_match_threads(tiny_models, tmp_path):
    """The GPU path's input pipeline (torch DataLoader workers, stacked batches), run on the
    CPU: the same vectors in the same order, a bad file an error at its own index, a batch of
    bad files only, and nothing of the model pickled into the workers."""
    from songsight.encoders.bioclip import BioCLIPEncoder

    paths = write_photos(tmp_path)
    bad, worse = tmp_path / "bad.jpg", tmp_path / "worse.png"
    bad.write_text("nope")
    worse.write_bytes(b"")
    mixed = [paths[0], paths[1], bad, worse, *paths[2:]]  # batch size 2: the second all bad
    threads = BioCLIPEncoder(tiny_models[1], device="cpu", batch_size=2)
    workers = BioCLIPEncoder(tiny_models[1], device="cpu", batch_size=2, prep_workers=2)
    assert (threads.prep_workers, threads.batch_size) == (0, 2)
    a, b = list(threads.iter_images(mixed)), list(workers.iter_images(mixed))
    assert [j for j, _ in b] == [j for j, _ in a] == list(range(len(mixed)))
    for (_, x), (_, y) in zip(a, b, strict=True):
        if isinstance(x, InputFileError):
            assert isinstance(y, InputFileError) and (y.path, y.reason) == (x.path, x.reason)
        else:
            np.testing.assert_allclose(y, x, atol=1e-6)
    assert BioCLIPEncoder(tiny_models[1], device="cpu").batch_size == 32  # a CPU's default


def test_squash_preprocess_keeps_the_whole_frame(tiny_models, tmp_path):
    from songsight.encoders.bioclip import BioCLIPEncoder

    squash = BioCLIPEncoder(tiny_models[1], device="cpu", preprocess="squash")
    wide = Image.new("RGB", (96, 32), (0, 0, 255))
    wide.paste((255, 0, 0), (0, 0, 16, 32))  # red strip at the left edge, cropped by "model"
    x = squash.transform(wide)
    assert tuple(x.shape) == (3, 32, 32)
    assert x[0, :, 0].mean() > x[2, :, 0].mean()  # red survives at the left edge
    assert squash.provenance()["preprocessing"]["choice"] == "squash"
    assert squash.provenance()["preprocessing"]["resize_mode"] == "squash"
    with pytest.raises(ValueError):
        BioCLIPEncoder(tiny_models[1], device="cpu", preprocess="stretch")


def test_text_embedding_matches_naive_open_clip(tiny_image_encoder, open_clip_reference):
    model, _, tokenizer = open_clip_reference
    texts = ["Animalia Chordata Aves Anseriformes Anatidae Branta canadensis with common name Canada Goose",
             "a photo of a Common Raven."]  # fmt: skip
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1).numpy()
    np.testing.assert_allclose(tiny_image_encoder.embed_texts(texts), ref, atol=1e-5)


def test_embed_species_is_template_average(tiny_image_encoder):
    species = [
        Species(0, "Branta canadensis", "Canada Goose", order="Anseriformes", family="Anatidae"),
        Species(1, "Aix sponsa", "Wood Duck", order="Anseriformes", family="Anatidae"),
        Species(2, "Corvus corax", "Common Raven", order="Passeriformes", family="Corvidae"),
    ]
    for fmt, templates in [("taxon_com", "openai"), ("com", ("a photo of {}.", "{} in flight"))]:
        got = tiny_image_encoder.embed_species(species, fmt, templates)
        tmpl = TEMPLATE_SETS[templates] if isinstance(templates, str) else templates
        expected = []
        for sp in species:
            e = tiny_image_encoder.embed_texts([t.format(sp.prompt(fmt)) for t in tmpl]).astype(
                np.float64
            )
            m = e.mean(axis=0)
            expected.append(m / np.linalg.norm(m))
        assert_unit_float32(got, 3, tiny_image_encoder.dim)
        np.testing.assert_allclose(got, np.stack(expected), atol=1e-5)
    # One template: the plain text embedding.
    np.testing.assert_allclose(tiny_image_encoder.embed_species(species[:1], "sci"),
                               tiny_image_encoder.embed_texts(["Branta canadensis"]), atol=1e-6)  # fmt: skip


def test_teacher_is_frozen(tiny_image_encoder):
    enc = tiny_image_encoder
    model = enc._model
    assert not any(p.requires_grad for p in model.parameters())
    seen = []

    def record(module, _inputs, output):
        seen.append((module.training, output.requires_grad))

    hooks = [
        model.visual.register_forward_hook(record),
        model.ln_final.register_forward_hook(record),
    ]
    try:
        before = enc.embed_images([Image.new("RGB", (32, 32), (10, 100, 200))])
        model.train()  # a caller (or a trainer sharing the module) flips it to training mode
        seen.clear()
        after = enc.embed_images([Image.new("RGB", (32, 32), (10, 100, 200))])
        assert seen == [(False, False)]  # ran in eval mode, built no graph
        model.train()
        seen.clear()
        enc.embed_texts(["a bird"])
        assert seen == [(False, False)]
    finally:
        for h in hooks:
            h.remove()
        model.eval()
    assert not model.training
    np.testing.assert_allclose(before, after, atol=1e-6)
    assert not any(p.requires_grad for p in model.parameters())


def test_image_provenance(tiny_image_encoder):
    prov = tiny_image_encoder.provenance()
    assert prov["encoder"] == "bioclip" and prov["kind"] == "image" and prov["dim"] == 48
    pre = prov["preprocessing"]
    assert pre["choice"] == "model" and pre["size"] in (32, (32, 32), [32, 32])
    assert pre["resize_mode"] == "shortest" and pre["interpolation"] == "bicubic"


def test_tokenizer_round_trip(tiny_audio_encoder):
    tok = tiny_audio_encoder.tokenizer
    for caption in ["a bird singing", "Canada Goose calling in the distance",
                    "Animalia Chordata Aves Passeriformes Corvidae Corvus corax with common name Common Raven",
                    "Zebra-finch 123 ÿ"]:  # fmt: skip
        ids = tok(caption)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        content = [i for i in ids if i not in tok.all_special_ids]
        assert len(content) >= 1 and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == caption
    # Words of the training corpus are whole tokens, not bytes.
    assert len([i for i in tok("a bird singing")["input_ids"] if i not in tok.all_special_ids]) <= 3


def test_open_clip_tokenizer_gives_real_tokens(tiny_image_encoder):
    ids = tiny_image_encoder.tokenizer(["a bird singing"])[0].tolist()
    sot, eot = tiny_image_encoder.tokenizer.sot_token_id, tiny_image_encoder.tokenizer.eot_token_id
    content = [i for i in ids if i not in (0, sot, eot)]
    assert ids[0] == sot and len(content) == 3
    assert tiny_image_encoder.tokenizer.decode(content).strip() == "a bird singing"
