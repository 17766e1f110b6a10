"""Shared fixtures: tiny real-architecture models, built once per session, never downloaded."""

from __future__ import annotations

import os
import tempfile

import pytest

# No test may reach the Hub: resolution falls back to the (empty) cache and fails cleanly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray's local cluster (the slow scale tests) waits 30 s for its GCS server to come up; on a
# loaded 2-core machine that start took longer and the tests errored before running.
os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "180")
# What songsight caches (int8 weights, teacher targets, crash logs) goes to a folder of the
# test run's own, never the user's ~/.cache.
os.environ["SONGSIGHT_CACHE"] = tempfile.mkdtemp(prefix="songsight-tests-cache-")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """(audio_dir, image_dir): a tiny ClapModel folder and a tiny open_clip folder."""
    from songsight.testing import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_audio_encoder(tiny_models):
    from songsight.encoders.biolingual import BioLingualEncoder

    return BioLingualEncoder(tiny_models[0], device="cpu", batch_size=4)


@pytest.fixture(scope="session")
def tiny_image_encoder(tiny_models):
    from songsight.encoders.bioclip import BioCLIPEncoder

    return BioCLIPEncoder(tiny_models[1], device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a whole module (its module fixtures included): the tiny models
    run as fast on one thread on an idle machine and ~10x faster on a busy 2-core one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def local_ray():
    """One local 2-CPU Ray instance for every Ray test of the run.

    Started once: a second start while the first cluster's processes are still exiting is
    what timed out on a busy CI machine; `start_local_ray` also tries again when a start
    misses Ray's fixed 30 s wait for its raylet.
    """
    ray = pytest.importorskip("ray", reason="the 'scale' extra: pip install 'songsight[scale]'")
    pytest.importorskip("ray.data", reason="the Ray engine needs ray[data]")
    from songsight.jobs.ray import start_local_ray

    start_local_ray(ray, num_cpus=2)
    yield ray
    ray.shutdown()
