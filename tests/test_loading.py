"""Model resolution: local folders, an offline Hugging Face cache, the error when missing, a fast CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
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


def test_cli_help_is_fast_and_torch_free():
    start = time.perf_counter()
    proc = subprocess.run([*songsight_cmd(), "--help"], capture_output=True, text=True, timeout=30)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0 and "embed" in proc.stdout
    assert elapsed < 2.0, f"songsight --help took {elapsed:.2f} s"

    code = (
        "import sys, songsight.cli as c; c.build_parser(); "
        "heavy = [m for m in ('torch', 'transformers', 'open_clip') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"imported at parse time: {proc.stdout.strip()}"
