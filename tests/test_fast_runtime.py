"""Every job on the fast runtime: the distilled encoder on ONNX Runtime answers as the torch one,
a gallery keeps its species text, and a search in a fresh process never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from songsight.cli import main
from tests.helpers import warble, write_noise_photo

pytest.importorskip("onnxruntime", reason="the 'int8' extra: pip install 'songsight[int8]'")

RATE = 16_000
TAXA = "label,scientific_name,common_name,order,family\n0,Branta canadensis,Canada Goose,Anseriformes,Anatidae\n1,Aix sponsa,Wood Duck,Anseriformes,Anatidae\n2,Turdus migratorius,American Robin,Passeriformes,Turdidae\n"  # fmt: skip


def _checkpoint(out: Path, audio_dir: Path, teacher: dict, kind: str) -> Path:
    """A distilled checkpoint saved as the trainer saves one: a linear head, or a cascade
    head over 3 species with random tables."""
    import torch
    from transformers import ClapFeatureExtractor

    from songsight.encoders.biolingual import load_clap
    from songsight.encoders.distilled import save_checkpoint
    from songsight.encoders.heads import build_head, init_cascade_head

    clap, _, tokenizer, resolved = load_clap(audio_dir)
    torch.manual_seed(0)
    dim, proj = int(teacher["dim"]), int(clap.config.projection_dim)
    head = build_head(proj, dim, kind, n_species=3)
    if kind == "cascade":
        rng = np.random.default_rng(0)
        text, targets = rng.standard_normal((3, proj)), rng.standard_normal((3, dim))
        text /= np.linalg.norm(text, axis=1, keepdims=True)
        targets /= np.linalg.norm(targets, axis=1, keepdims=True)
        init_cascade_head(head, text, targets, 0.1)
    meta = {
        "kind": "songsight-distilled",
        "audio_model": resolved.provenance(),
        "image_model": {k: teacher[k] for k in ("model_id", "revision", "dim", "source")},
        "head": {"in_dim": proj, "out_dim": dim, "kind": kind, "hidden": None, "n_species": 3},
        "prompts": {"prompt_format": "taxon_com", "templates": "none"},
        "readout": {"method": "distilled", "fusion_weight": 0.5, "fusion_gate": "soft"},
        "logit_scale": 10.0,
        "cascade": {"audio_prompt_format": "com", "audio_templates": "sound", "temperature": 0.05},
        "train_species": ["Branta canadensis", "Aix sponsa"],
    }
    extractor = ClapFeatureExtractor.from_pretrained(resolved.path)
    return save_checkpoint(out, clap, extractor, tokenizer, head, meta)


def _run_without_torch(argv: list[str]) -> str:
    """``songsight ARGV`` in a fresh interpreter; it must succeed without importing torch.
    Returns its standard output."""
    code = (
        "import json, sys\nfrom songsight.cli import main\n"
        f"rc = main(json.loads({json.dumps(argv)!r}))\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "NO TORCH" in proc.stderr, f"{argv[:2]}: torch was imported"
    return proc.stdout


@pytest.mark.parametrize("kind", ["linear", "cascade"])
def test_the_distilled_encoder_on_onnx_runtime_answers_as_on_torch(
    kind, tiny_models, tiny_image_encoder, tmp_path
):
    from songsight.encoders.distilled import DistilledEncoder
    from songsight.encoders.ort_distilled import OnnxDistilledEncoder
    from songsight.encoders.runtime import open_distilled_encoder

    ckpt = _checkpoint(tmp_path / "ckpt", tiny_models[0], tiny_image_encoder.provenance(), kind)
    long = (np.resize(warble(1500, 3.7, RATE), RATE * 9), RATE)  # several windows
    fast = open_distilled_encoder(ckpt, runtime="onnxruntime", quiet=True)
    slow = DistilledEncoder(ckpt, device="cpu")
    assert isinstance(fast, OnnxDistilledEncoder)
    a, b = fast.embed_clips([long])[0], slow.embed_clips([long])[0]
    assert len(a.windows) == len(b.windows) > 1
    np.testing.assert_allclose(a.windows, b.windows, atol=1e-4)
    np.testing.assert_allclose(a.clip, b.clip, atol=1e-4)
    np.testing.assert_allclose(a.heard_clip(), b.heard_clip(), atol=1e-4)
    prov_fast, prov_slow = fast.provenance(), slow.provenance()
    for key in ("model_id", "revision", "dim", "distilled_from", "teacher"):
        assert prov_fast[key] == prov_slow[key], key
    # fused: one set of log-mels feeds both towers, as if each had computed its own
    fused = open_distilled_encoder(ckpt, fused_with=tiny_models[0], runtime="onnxruntime", quiet=True)  # fmt: skip
    base = fused.base
    f = fused.embed_clips([long])[0]
    np.testing.assert_allclose(f.windows, np.concatenate([a.windows, base.embed_clips([long])[0].windows], axis=1), atol=1e-6)  # fmt: skip
    assert fused.shared_features
    # ...and the path for a base that reads its own features (run apart) gives the same rows
    fused.shared_features = False
    np.testing.assert_allclose(fused.embed_clips([long])[0].windows, f.windows, atol=1e-6)


def _gallery(tmp_path: Path, image_dir: Path) -> Path:
    (tmp_path / "taxa.csv").write_text(TAXA)
    photos = [write_noise_photo(tmp_path / "p" / f"{i}.png", 90 + i, (18, 18)) for i in range(6)]
    (tmp_path / "m.csv").write_text(
        "path,label\n" + "".join(f"{p},{i % 3}\n" for i, p in enumerate(photos))
    )
    g = tmp_path / "g"
    argv = ["index", "build", "--manifest", str(tmp_path / "m.csv"), "--species", str(tmp_path / "taxa.csv"),
            "--gallery", str(g), "--image-model", str(image_dir), "--runtime", "onnxruntime", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return g


def test_a_search_in_a_fresh_process_never_imports_torch(tiny_models, tiny_image_encoder, tmp_path):  # fmt: skip
    """The first search exports the towers and keeps the gallery's species text; any later one,
    in a new process on ONNX Runtime, runs without torch: the cascade and a distilled model."""
    g = _gallery(tmp_path, tiny_models[1])
    ckpt = _checkpoint(
        tmp_path / "ckpt", tiny_models[0], tiny_image_encoder.provenance(), "cascade"
    )
    sf.write(tmp_path / "call.wav", warble(1800, 2.0, RATE), RATE)
    searches = {
        "cascade": ["--audio-model", str(tiny_models[0])],
        "distilled": ["--model", str(ckpt)],
        "fused": ["--model", str(ckpt), "--method", "fused", "--audio-model", str(tiny_models[0])],
    }
    for name, extra in searches.items():
        argv = ["search", str(tmp_path / "call.wav"), "--gallery", str(g), *extra,
                "--runtime", "onnxruntime", "--format", "json", "--quiet"]  # fmt: skip
        assert main(argv) == 0, name  # the first: exports, caches the species text
        stdout = _run_without_torch(argv)
        assert json.loads(stdout)[0]["hits"], name
    assert sorted(p.name.split("-")[0] for p in (g / "species_text").iterdir()) == [
        "audio",
        "image",
    ]


def test_the_species_text_cache_is_the_text_towers_answer_and_keyed_by_prompts(tiny_models, tmp_path):  # fmt: skip
    from songsight.encoders.prompts import embed_species_text
    from songsight.encoders.runtime import open_torch_encoder
    from songsight.retrieval.species_text import cached_species_text
    from songsight.taxonomy import load_species_csv

    (tmp_path / "taxa.csv").write_text(TAXA)
    species = load_species_csv(tmp_path / "taxa.csv")
    enc = open_torch_encoder(tiny_models[1], "image", device="cpu")
    model = enc.provenance()
    calls = []

    def load():
        calls.append(1)
        return enc

    first, _ = cached_species_text(tmp_path, "image", model, species, "taxon_com", "none", load)
    again, _ = cached_species_text(tmp_path, "image", model, species, "taxon_com", "none", load)
    np.testing.assert_allclose(first, embed_species_text(enc, species, "taxon_com", "none"))
    np.testing.assert_array_equal(first, again)
    assert len(calls) == 1  # the second came from the cache
    other, _ = cached_species_text(tmp_path, "image", model, species, "sci", "none", load)
    assert len(calls) == 2 and not np.allclose(other, first)  # other prompts: other entry


def test_int8_audio_runs_on_onnx_runtime_without_torch_and_answers_as_torchs_int8(tiny_models, tmp_path):  # fmt: skip
    """``embed audio --precision int8`` takes ONNX Runtime where fp32 would (its tower exported
    and quantised once), so a later job starts without torch; its vectors agree with torch's
    int8 job and with fp32 up to int8's rounding."""
    from songsight.index.store import load_embeddings

    clips = []
    for i, hz in enumerate((900, 1800, 3200)):
        clips.append(tmp_path / f"c{i}.wav")
        sf.write(clips[-1], warble(hz, 1.5 + i, RATE), RATE)

    def argv(name, *extra):
        return ["embed", "audio", *map(str, clips), "--audio-model", str(tiny_models[0]),
                "--out", str(tmp_path / f"{name}.parquet"), "--quiet", *extra]  # fmt: skip

    assert main(argv("first", "--precision", "int8")) == 0  # exports and quantises, once
    _run_without_torch(argv("ort", "--precision", "int8"))
    assert main(argv("torch", "--precision", "int8", "--runtime", "torch")) == 0
    assert main(argv("fp32")) == 0
    _, ort, prov = load_embeddings(tmp_path / "ort.parquet")
    _, torch_int8, _ = load_embeddings(tmp_path / "torch.parquet")
    _, fp32, _ = load_embeddings(tmp_path / "fp32.parquet")
    assert prov["precision"] == "int8" and prov["quantization"]["engine"] == "onnxruntime"
    # the same int8 graph; the log-mels differ in their float width (float64 here, float32 there)
    assert np.min(np.sum(ort * torch_int8, axis=1)) > 0.999
    assert np.min(np.sum(ort * fp32, axis=1)) > 0.98
