"""Ray engine: the same store (columns, provenance, vectors, resume) as the single-machine path,
on a local 2-CPU Ray instance."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from songsight.index.store import IDENTITY_KEYS, load_embeddings
from songsight.jobs.embed import embed_audio_files
from tests.helpers import write_noise_photo

ray = pytest.importorskip("ray", reason="Ray is the optional 'scale' extra: pip install 'songsight[scale]'")  # fmt: skip
pytest.importorskip("ray.data", reason="the Ray engine needs ray[data]")

# Each Ray Data run starts its model actors, fresh processes that import torch: ~10 s apiece.
pytestmark = pytest.mark.slow


def _photos(folder, seeds) -> None:
    for i in seeds:
        write_noise_photo(folder / f"p{i}.png", i, (24, 20))


def _same_store(a, b):
    """Same columns, identity provenance, rows and vectors, whatever the row order."""
    meta_a, vec_a, prov_a = load_embeddings(a)
    meta_b, vec_b, prov_b = load_embeddings(b)
    assert pq.read_schema(a).names == pq.read_schema(b).names
    assert {k: prov_a.get(k) for k in IDENTITY_KEYS} == {k: prov_b.get(k) for k in IDENTITY_KEYS}
    key = [c for c in ("path", "window") if c in meta_a.columns]
    order_a = meta_a.sort_values(key).index.to_numpy()
    order_b = meta_b.sort_values(key).index.to_numpy()
    assert meta_a.loc[order_a].reset_index(drop=True).equals(meta_b.loc[order_b].reset_index(drop=True))  # fmt: skip
    np.testing.assert_allclose(vec_a[order_a], vec_b[order_b], atol=1e-5)


def test_ray_gallery_equals_single_machine_and_resumes(local_ray, tiny_models, tiny_image_encoder, tmp_path):  # fmt: skip
    from songsight.gallery import Gallery, add_to_gallery

    photos = tmp_path / "photos"
    _photos(photos, range(6))
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    image_dir = str(tiny_models[1])
    local = Gallery.build([photos], tmp_path / "local", tiny_image_encoder, progress=False)
    gallery = Gallery.build(
        [photos], tmp_path / "ray", image_dir, engine="ray", workers=2, batch_size=2,
        device="cpu", progress=False,
    )  # fmt: skip
    assert (gallery.report.n_embedded, gallery.report.n_failed) == (6, 1)
    assert "broken.jpg" in (tmp_path / "ray" / "errors.csv").read_text()
    assert gallery.image_model["model_id"] == local.image_model["model_id"]
    assert gallery.image_model["revision"] == local.image_model["revision"]
    _same_store(tmp_path / "local" / "gallery.parquet", tmp_path / "ray" / "gallery.parquet")
    # Adding on Ray embeds only the new photo; the rest is skipped by content hash.
    _photos(photos, [6])
    report = add_to_gallery([photos], tmp_path / "ray", engine="ray", workers=1, device="cpu", progress=False)  # fmt: skip
    assert (report.n_embedded, report.n_skipped, report.n_images) == (1, 6, 7)
    local.add([photos], image_model=tiny_image_encoder, progress=False)
    _same_store(tmp_path / "local" / "gallery.parquet", tmp_path / "ray" / "gallery.parquet")


def test_ray_audio_store_equals_single_machine(local_ray, tiny_models, tiny_audio_encoder, tmp_path):  # fmt: skip
    from songsight.jobs.ray import embed_audio_files_ray

    audio = tmp_path / "audio"
    audio.mkdir()
    rate = 16_000
    for i, seconds in enumerate((1.0, 3.7, 5.2)):
        t = np.arange(int(seconds * rate)) / rate
        sf.write(audio / f"r{i}.wav", (0.3 * np.sin(2 * np.pi * (500 + 300 * i) * t)).astype(np.float32), rate)  # fmt: skip
    (audio / "bad.wav").write_text("not audio")
    local = embed_audio_files([audio], tmp_path / "local.parquet", tiny_audio_encoder, progress=False)  # fmt: skip
    report = embed_audio_files_ray(
        [audio], tmp_path / "ray.parquet", str(tiny_models[0]), concurrency=1, files_per_batch=2,
        device="cpu", progress=False,
    )  # fmt: skip
    assert (report.n_embedded, report.n_failed, report.n_rows) == (3, 1, local.n_rows)
    assert "bad.wav" in (tmp_path / "ray.errors.csv").read_text()
    _same_store(tmp_path / "local.parquet", tmp_path / "ray.parquet")
