"""The small pieces every caller shares, each checked once against a plain reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from songsight.distill.setup import warmup_cosine
from songsight.encoders.base import l2_normalize
from songsight.encoders.prompts import embed_prompt_average, mean_of_prompts
from songsight.inputs.files import ErrorLog, errors_path_for, read_errors, write_errors


def test_l2_normalize_numpy_and_torch_agree_and_keep_zero_rows():
    x = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float64)
    x[2] = 0.0
    got = l2_normalize(x)
    assert got.dtype == np.float32
    for row, ref in zip(got, x, strict=True):
        n = math.sqrt(sum(v * v for v in ref))
        np.testing.assert_allclose(row, ref / n if n else ref, rtol=1e-6)
    np.testing.assert_allclose(l2_normalize(torch.from_numpy(x)).numpy(), got, rtol=1e-6)


def test_mean_of_prompts_is_the_renormalised_mean_per_species():
    rng = np.random.default_rng(1)
    emb = l2_normalize(rng.standard_normal((3 * 4, 6)))  # 3 species x 4 prompts, species-major
    got = mean_of_prompts(emb, 3)
    for s in range(3):
        mean = emb[4 * s : 4 * s + 4].sum(axis=0) / 4
        np.testing.assert_allclose(got[s], mean / np.linalg.norm(mean), rtol=1e-5)
    np.testing.assert_allclose(mean_of_prompts(torch.from_numpy(emb), 3).numpy(), got, rtol=1e-5)


def test_embed_prompt_average_embeds_every_prompt_once_in_order():
    seen: list[str] = []

    class Recorder:
        def embed_texts(self, texts):
            seen.extend(texts)
            return l2_normalize(np.eye(len(texts), 4, dtype=np.float32) + 0.1)

    prompts = [["a x", "b x"], ["a y", "b y"]]
    got = embed_prompt_average(Recorder(), prompts)
    assert seen == ["a x", "b x", "a y", "b y"] and got.shape == (2, 4)
    assert embed_prompt_average(Recorder(), []).shape == (0, 4)


def test_warmup_cosine_against_its_formula():
    f = warmup_cosine(10, 110)
    for step in range(0, 130):
        if step < 10:
            expected = (step + 1) / 10
        else:
            expected = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - 10) / 100)))
        assert f(step) == pytest.approx(expected)


def test_errors_file_round_trip_and_removal(tmp_path):
    path = errors_path_for(tmp_path / "store.parquet")
    assert path.name == "store.errors.csv"
    rows = [("a, with comma.wav", 'bad "quote"'), ("b.wav", "zero-length audio")]
    write_errors(path, rows)
    assert read_errors(path) == rows and not path.with_name(path.name + ".tmp").exists()
    write_errors(path, [])
    assert not path.exists() and read_errors(path) == []


def test_error_log_is_on_disk_line_by_line_and_gone_when_empty(tmp_path):
    path = tmp_path / "job.errors.csv"
    log = ErrorLog(path, [("earlier.wav", "unreadable")])
    log.write("now.wav", "corrupt")
    assert read_errors(path) == [("earlier.wav", "unreadable"), ("now.wav", "corrupt")]
    log.close()
    assert log.count == 2 and path.exists()
    empty = ErrorLog(tmp_path / "none.errors.csv")
    empty.close()
    assert not (tmp_path / "none.errors.csv").exists()
