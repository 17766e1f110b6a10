"""Model resolution: local folders, an offline Hugging Face cache, the error when missing, a fast CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from songsight.encoders.loading import ResolvedModel, resolve_model
from songsight.errors import ModelNotFoundError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(hf_home: Path, repo_id: str, model_dir: Path, commit: str = COMMIT) -> Path:
    """Lay ``model_dir`` out as huggingface_hub caches a download: blobs, snapshot links, refs/main."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(sorted(model_dir.iterdir())):
        blob = repo / "blobs" / f"{i:040x}"
        shutil.copyfile(f, blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hub_home(tmp_path, tiny_models, monkeypatch):
    """HF_HOME with the tiny audio and image models cached under real-looking Hub ids."""
    import huggingface_hub.constants as hf_constants

    home = tmp_path / "hf-home"
    fake_hub_cache(home, "davidrrobinson/BioLingual", tiny_models[0])
    fake_hub_cache(home, "imageomics/bioclip-2", tiny_models[1])
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HOME once at import; point the already-imported constant here too.
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


def test_local_dirs_resolve(tiny_models):
    audio_dir, image_dir = tiny_models
    audio = resolve_model(str(audio_dir), "audio")
    image = resolve_model(str(image_dir), "image")
    assert audio.source == image.source == "local"
    assert audio.path == audio_dir.resolve() and image.path == image_dir.resolve()
    assert audio.revision.startswith("local-") and audio.revision != image.revision
    # The revision is a content id: stable across calls, different when the weights change.
    assert resolve_model(str(audio_dir), "audio").revision == audio.revision
    assert set(audio.provenance()) == {"model_id", "revision", "source"}


def test_local_revision_changes_with_content(tiny_models, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_models[0], copy)
    before = resolve_model(str(copy), "audio").revision
    assert before == resolve_model(str(tiny_models[0]), "audio").revision  # same bytes, same id
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert resolve_model(str(copy), "audio").revision != before


def test_wrong_kind_of_folder(tiny_models):
    with pytest.raises(ModelNotFoundError, match="open_clip_config.json"):
        resolve_model(str(tiny_models[0]), "image")
    with pytest.raises(ModelNotFoundError, match="preprocessor_config.json"):
        resolve_model(str(tiny_models[1]), "audio")
    with pytest.raises(ValueError):
        resolve_model(str(tiny_models[0]), "video")


def test_missing_models(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(ModelNotFoundError, match="model folder not found"):
        resolve_model(str(tmp_path / "no" / "such" / "dir"), "audio")
    with pytest.raises(
        ModelNotFoundError, match=r"songsight download --audio-model someone/NoSuchModel"
    ):
        resolve_model("someone/NoSuchModel", "audio")
    with pytest.raises(ModelNotFoundError, match=r"imageomics/bioclip-2.*not in the local"):
        resolve_model("hf-hub:imageomics/bioclip-2", "image")


def test_hub_cache_resolves_offline(hub_home):
    audio = resolve_model("davidrrobinson/BioLingual", "audio")
    assert audio.source == "hub-cache" and audio.revision == COMMIT
    assert audio.model_id == "davidrrobinson/BioLingual"
    assert (
        audio.path == hub_home / "hub" / "models--davidrrobinson--BioLingual" / "snapshots" / COMMIT
    )
    # Pinning the commit gives the same snapshot; an unknown commit is a clear miss.
    assert resolve_model("davidrrobinson/BioLingual", "audio", revision=COMMIT).path == audio.path
    with pytest.raises(ModelNotFoundError, match=f"at revision {'f' * 40}"):
        resolve_model("davidrrobinson/BioLingual", "audio", revision="f" * 40)
    image = resolve_model("hf-hub:imageomics/bioclip-2", "image")
    assert image.revision == COMMIT and image.model_id == "hf-hub:imageomics/bioclip-2"
    # An audio repo asked for as an image model is refused, not half-loaded.
    with pytest.raises(ModelNotFoundError, match="open_clip_config.json"):
        resolve_model("davidrrobinson/BioLingual", "image")


def test_encoders_load_from_hub_cache(hub_home, tiny_audio_encoder, tiny_image_encoder):
    from songsight.encoders.bioclip import BioCLIPEncoder
    from songsight.encoders.biolingual import BioLingualEncoder

    audio_enc = BioLingualEncoder("davidrrobinson/BioLingual", device="cpu")
    image_enc = BioCLIPEncoder("hf-hub:imageomics/bioclip-2", device="cpu")
    prov = audio_enc.provenance()
    assert prov["model_id"] == "davidrrobinson/BioLingual" and prov["revision"] == COMMIT
    assert image_enc.provenance()["revision"] == COMMIT
    # Same weights as the local-folder fixtures: the same vectors.
    wave = np.random.default_rng(0).standard_normal(20_000).astype(np.float32) * 0.1
    np.testing.assert_allclose(audio_enc.embed_audio([wave], sample_rate_hz=16_000),
                               tiny_audio_encoder.embed_audio([wave], sample_rate_hz=16_000), atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(image_enc.embed_texts(["a bird"]), tiny_image_encoder.embed_texts(["a bird"]),
                               atol=1e-6)  # fmt: skip


def test_encoders_take_resolved_models(tiny_models):
    from songsight.encoders.biolingual import BioLingualEncoder

    resolved = resolve_model(str(tiny_models[0]), "audio")
    assert isinstance(resolved, ResolvedModel)
    enc = BioLingualEncoder(resolved, device="cpu")
    assert enc.resolved == resolved and enc.provenance()["revision"] == resolved.revision


def test_encoder_missing_model_raises_before_loading(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    from songsight.encoders.bioclip import BioCLIPEncoder
    from songsight.encoders.biolingual import BioLingualEncoder

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(ModelNotFoundError, match="BioLingual"):
        BioLingualEncoder("davidrrobinson/BioLingual", device="cpu")
    with pytest.raises(ModelNotFoundError, match="bioclip-2"):
        BioCLIPEncoder("hf-hub:imageomics/bioclip-2", device="cpu")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(extra)
    return env


def songsight_cmd() -> list[str]:
    script = Path(sys.executable).with_name("songsight")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "songsight.cli"]


def test_cli_missing_model_is_one_clean_line(tmp_path):
    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"")
    empty_home = tmp_path / "empty-hf-home"
    empty_home.mkdir()
    proc = subprocess.run(
        [*songsight_cmd(), "embed", "audio", str(clip), "--out", str(tmp_path / "o.parquet"),
         "--audio-model", "davidrrobinson/BioLingual"],  # fmt: skip
        env=_clean_env(HF_HOME=str(empty_home), HF_HUB_OFFLINE="1"),
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert "davidrrobinson/BioLingual" in lines[0] and "songsight download" in lines[0]
    assert not (tmp_path / "o.parquet").exists()


def test_cli_help_is_torch_free():
    """What keeps `--help` fast: no heavy import before parsing (benchmarks/cli_latency.py
    prints how long it takes)."""
    proc = subprocess.run([*songsight_cmd(), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "embed" in proc.stdout

    code = (
        "import sys, songsight.cli as c; c.build_parser(); "
        "heavy = [m for m in ('torch', 'transformers', 'open_clip') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"imported at parse time: {proc.stdout.strip()}"


# ---- every layout the pinned libraries write, and the folders that are really unusable --------


@pytest.fixture(scope="module")
def processor_layout_clap(tmp_path_factory, tiny_models):
    """The fixture CLAP's weights and tokenizer re-saved by the pinned transformers'
    ``ClapModel.save_pretrained`` + ``ClapProcessor.save_pretrained``."""
    from transformers import AutoTokenizer, ClapModel

    from songsight.sim.tiny_models import TinyClapSpec, build_tiny_clap

    model = ClapModel.from_pretrained(tiny_models[0])
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[0])
    out = tmp_path_factory.mktemp("processor-layout") / "clap"
    return build_tiny_clap(
        out, TinyClapSpec(), model=model, tokenizer=tokenizer, layout="processor"
    )


def test_processor_layout_is_what_the_pinned_transformers_writes(processor_layout_clap):
    """The premise: no preprocessor_config.json, the feature extractor nested in
    processor_config.json, and transformers itself loads it."""
    import json

    from transformers import ClapFeatureExtractor

    names = {f.name for f in processor_layout_clap.iterdir()}
    assert "preprocessor_config.json" not in names and "processor_config.json" in names
    nested = json.loads((processor_layout_clap / "processor_config.json").read_text())
    assert nested["feature_extractor"]["feature_extractor_type"] == "ClapFeatureExtractor"
    assert ClapFeatureExtractor.from_pretrained(processor_layout_clap).sampling_rate == 16_000


def test_processor_layout_embeds_as_the_hub_layout(processor_layout_clap, tiny_audio_encoder):
    from songsight.encoders.biolingual import BioLingualEncoder

    enc = BioLingualEncoder(processor_layout_clap, device="cpu", batch_size=4)
    assert enc.features.describe() == tiny_audio_encoder.features.describe()
    wave = np.random.default_rng(3).standard_normal(40_000).astype(np.float32) * 0.1
    np.testing.assert_allclose(enc.embed_audio([wave], sample_rate_hz=16_000),
                               tiny_audio_encoder.embed_audio([wave], sample_rate_hz=16_000), atol=1e-6)  # fmt: skip
    texts = ["Canada Goose calling", "the sound of a wood duck"]
    np.testing.assert_allclose(
        enc.embed_texts(texts), tiny_audio_encoder.embed_texts(texts), atol=1e-6
    )


def test_processor_layout_from_the_hub_cache(tmp_path, processor_layout_clap, monkeypatch):
    import huggingface_hub.constants as hf_constants

    home = tmp_path / "hf-home"
    fake_hub_cache(home, "someone/finetuned-biolingual", processor_layout_clap)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(home / "hub"))
    resolved = resolve_model("someone/finetuned-biolingual", "audio")
    assert resolved.source == "hub-cache" and resolved.revision == COMMIT


def test_cli_embeds_with_a_processor_layout_folder(processor_layout_clap, tmp_path, capsys):
    import soundfile as sf

    from songsight.cli import main
    from songsight.index.store import load_embeddings

    clip = tmp_path / "clip.wav"
    sf.write(
        clip, np.random.default_rng(0).standard_normal(24_000).astype(np.float32) * 0.1, 16_000
    )
    out = tmp_path / "a.parquet"
    args = ["embed", "audio", str(clip), "--out", str(out), "--audio-model", str(processor_layout_clap),
            "--device", "cpu", "--quiet"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    meta, emb, _ = load_embeddings(out)
    assert len(meta) == 1 and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_distilled_checkpoint_with_a_processor_layout_clap(
    processor_layout_clap, tiny_models, tmp_path
):
    """A checkpoint's own clap/ folder re-saved as the pinned ClapProcessor writes it loads and
    embeds as the original checkpoint."""
    import torch
    from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

    from songsight.encoders.distilled import DistilledEncoder, save_checkpoint
    from songsight.encoders.heads import build_head

    torch.manual_seed(0)
    meta = {"head": {"in_dim": 32, "out_dim": 48, "kind": "linear"}}
    ckpt = save_checkpoint(tmp_path / "ckpt", ClapModel.from_pretrained(tiny_models[0]),
                           ClapFeatureExtractor.from_pretrained(tiny_models[0]),
                           AutoTokenizer.from_pretrained(tiny_models[0]), build_head(32, 48), meta)  # fmt: skip
    wave = np.random.default_rng(4).standard_normal(30_000).astype(np.float32) * 0.1
    before = DistilledEncoder(ckpt, device="cpu").embed_audio([wave], sample_rate_hz=16_000)
    shutil.rmtree(ckpt / "clap")
    shutil.copytree(processor_layout_clap, ckpt / "clap")
    after = DistilledEncoder(ckpt, device="cpu").embed_audio([wave], sample_rate_hz=16_000)
    np.testing.assert_allclose(after, before, atol=1e-6)


def _broken_copy(src: Path, dst: Path, remove=(), write=None) -> Path:
    shutil.copytree(src, dst)
    for name in remove:
        (dst / name).unlink()
    for name, text in (write or {}).items():
        (dst / name).write_text(text)
    return dst


AUDIO_BREAKAGES = {
    "no weights": ({"remove": ["model.safetensors"]}, "no weights"),
    "no tokenizer": ({"remove": ["tokenizer.json"]}, "no tokenizer"),
    "no preprocessing": ({"remove": ["preprocessor_config.json"]}, "preprocessor_config.json"),
    "processor without extractor": (
        {"remove": ["preprocessor_config.json"], "write": {"processor_config.json": '{"processor_class": "ClapProcessor"}'}},
        "processor_config.json holding a feature_extractor",
    ),
    "not json": ({"write": {"config.json": "{not json"}}, "config.json"),
    "another architecture": ({"write": {"config.json": '{"model_type": "roberta"}'}}, "'roberta'"),
    "bad weights": ({"write": {"model.safetensors": "not a safetensors file"}}, "could not load"),
}  # fmt: skip


def _open_clip_saved_by_open_clip(src: Path, dst: Path) -> Path:
    """``src``'s weights written by open_clip's own ``save_for_hf`` with pickled weights
    (``open_clip_pytorch_model.bin``), the other layout open_clip publishes with."""
    import json
    from types import SimpleNamespace

    import open_clip
    from open_clip.push_to_hf_hub import save_for_hf

    model = open_clip.create_model(f"local-dir:{src}")
    model_cfg = json.loads((src / "open_clip_config.json").read_text())["model_cfg"]
    # BioCLIP-2's CLIP tokenizer has nothing to save; save_for_hf insists on calling it.
    no_files = SimpleNamespace(save_pretrained=lambda _dir: None)
    save_for_hf(model, no_files, model_cfg, str(dst), safe_serialization=False)
    return dst


def test_open_clip_folder_with_pickled_weights_loads(tiny_models, tiny_image_encoder, tmp_path):
    from songsight.encoders.bioclip import BioCLIPEncoder

    folder = _open_clip_saved_by_open_clip(tiny_models[1], tmp_path / "oc")
    assert {f.name for f in folder.iterdir()} == {
        "open_clip_config.json",
        "open_clip_pytorch_model.bin",
    }
    enc = BioCLIPEncoder(folder, device="cpu")
    texts = ["Branta canadensis", "a photo of a wood duck"]
    np.testing.assert_allclose(
        enc.embed_texts(texts), tiny_image_encoder.embed_texts(texts), atol=1e-6
    )


IMAGE_BREAKAGES = {
    # open_clip itself would build a random-init model here and only log a warning.
    "no weights": ({"remove": ["open_clip_model.safetensors"]}, "no weights open_clip reads"),
    "a training checkpoint": ({"write": {"epoch_3.pt": "x"}, "remove": ["open_clip_model.safetensors"]}, "epoch_3.pt"),
    "no model_cfg": ({"write": {"open_clip_config.json": '{"preprocess_cfg": {}}'}}, "model_cfg"),
    "bad weights": ({"write": {"open_clip_model.safetensors": "garbage"}}, "could not load"),
}  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "case"),
    [("audio", c) for c in AUDIO_BREAKAGES] + [("image", c) for c in IMAGE_BREAKAGES],
)
def test_unusable_model_folders_are_one_clear_error(kind, case, tiny_models, tmp_path):
    from songsight.encoders.bioclip import BioCLIPEncoder
    from songsight.encoders.biolingual import BioLingualEncoder

    audio = kind == "audio"
    change, expected = (AUDIO_BREAKAGES if audio else IMAGE_BREAKAGES)[case]
    folder = _broken_copy(tiny_models[0 if audio else 1], tmp_path / kind, **change)
    with pytest.raises(ModelNotFoundError) as info:
        (BioLingualEncoder if audio else BioCLIPEncoder)(folder, device="cpu")
    message = str(info.value)
    assert expected in message and str(folder) in message and "\n" not in message


def test_cli_unusable_model_folder_is_exit_2_one_line(tiny_models, tmp_path):
    folder = _broken_copy(tiny_models[0], tmp_path / "clap", remove=["model.safetensors"])
    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"RIFF")
    proc = subprocess.run(
        [*songsight_cmd(), "embed", "audio", str(clip), "--out", str(tmp_path / "o.parquet"),
         "--audio-model", str(folder)],  # fmt: skip
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no weights" in lines[0], lines
