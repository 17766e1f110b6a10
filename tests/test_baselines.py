"""Cascade and text-mapping baselines against loops, sklearn and scipy references."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from sklearn.linear_model import LinearRegression, Ridge

from songsight.baselines.cascade import (
    cascade_queries,
    queries_from_probabilities,
    species_probabilities,
)
from songsight.baselines.text_mapping import (
    TextMapping,
    fit_mlp,
    fit_procrustes,
    fit_ridge,
)
from tests.helpers import unit_rows


def _assert_unit_rows(x: np.ndarray) -> None:
    assert x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


# ---- cascade ----


def test_species_probabilities_matches_loop():
    audio, text = unit_rows(5, 8, 0), unit_rows(3, 8, 1)
    probs = species_probabilities(audio, text, temperature=0.05)
    assert probs.shape == (5, 3) and probs.dtype == np.float32
    for n in range(5):
        logits = [float(np.dot(audio[n], text[s])) / 0.05 for s in range(3)]
        weights = [math.exp(v - max(logits)) for v in logits]
        for s in range(3):
            assert probs[n, s] == pytest.approx(weights[s] / sum(weights), rel=1e-5, abs=1e-7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_species_probabilities_tiny_temperature_does_not_overflow():
    probs = species_probabilities(unit_rows(4, 8, 2), unit_rows(6, 8, 3), temperature=1e-6)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.max(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_species_probabilities_rejects_bad_temperature(temperature):
    with pytest.raises(ValueError):
        species_probabilities(unit_rows(2, 4, 0), unit_rows(3, 4, 1), temperature)


def test_cascade_top1_picks_argmax_species():
    audio, bl_text, bc_text = unit_rows(6, 8, 4), unit_rows(4, 8, 5), unit_rows(4, 12, 6)
    queries = cascade_queries(audio, bl_text, bc_text, temperature=0.1, mode="top1")
    assert queries.shape == (6, 12)
    _assert_unit_rows(queries)
    for n in range(6):
        best = max(range(4), key=lambda s: float(np.dot(audio[n], bl_text[s])))
        np.testing.assert_array_equal(queries[n], bc_text[best])
    # The argmax does not depend on the temperature.
    again = cascade_queries(audio, bl_text, bc_text, temperature=7.0, mode="top1")
    np.testing.assert_array_equal(queries, again)


def test_cascade_weighted_matches_loop():
    audio, bl_text, bc_text = unit_rows(5, 8, 7), unit_rows(3, 8, 8), unit_rows(3, 12, 9)
    queries = cascade_queries(audio, bl_text, bc_text, temperature=0.2, mode="weighted")
    probs = species_probabilities(audio, bl_text, 0.2)
    _assert_unit_rows(queries)
    for n in range(5):
        mixed = sum(float(probs[n, s]) * bc_text[s].astype(np.float64) for s in range(3))
        np.testing.assert_allclose(queries[n], mixed / np.linalg.norm(mixed), atol=1e-6)


def test_cascade_weighted_temperature_limits():
    audio, bl_text, bc_text = unit_rows(4, 8, 10), unit_rows(5, 8, 11), unit_rows(5, 12, 12)
    cold = cascade_queries(audio, bl_text, bc_text, temperature=1e-4, mode="weighted")
    top1 = cascade_queries(audio, bl_text, bc_text, temperature=1e-4, mode="top1")
    np.testing.assert_allclose(cold, top1, atol=1e-5)
    hot = cascade_queries(audio, bl_text, bc_text, temperature=1e6, mode="weighted")
    mean = bc_text.mean(axis=0)
    np.testing.assert_allclose(hot, np.tile(mean / np.linalg.norm(mean), (4, 1)), atol=1e-5)


def test_cascade_single_species_and_ties():
    audio, bl_text, bc_text = unit_rows(3, 4, 13), unit_rows(1, 4, 14), unit_rows(1, 6, 15)
    for mode in ("top1", "weighted"):
        queries = cascade_queries(audio, bl_text, bc_text, temperature=0.1, mode=mode)
        np.testing.assert_allclose(queries, np.tile(bc_text, (3, 1)), atol=1e-6)
    # Exact ties go to the first species.
    tied = np.full((2, 3), 1 / 3, dtype=np.float32)
    np.testing.assert_array_equal(
        queries_from_probabilities(tied, unit_rows(3, 6, 16))[0], unit_rows(3, 6, 16)[0]
    )


def test_cascade_rejects_mismatches():
    with pytest.raises(ValueError):
        cascade_queries(unit_rows(2, 4, 0), unit_rows(3, 4, 1), unit_rows(2, 6, 2), 0.1)
    with pytest.raises(ValueError):
        cascade_queries(unit_rows(2, 5, 0), unit_rows(3, 4, 1), unit_rows(3, 6, 2), 0.1)
    with pytest.raises(ValueError):
        cascade_queries(
            unit_rows(2, 4, 0), unit_rows(3, 4, 1), unit_rows(3, 6, 2), 0.1, mode="top5"
        )


# ---- ridge ----


@pytest.mark.parametrize(("n_pairs", "alpha"), [(700, 1.0), (120, 0.3), (120, 25.0)])
def test_fit_ridge_matches_sklearn(n_pairs, alpha):
    x, y = unit_rows(n_pairs, 512, 20), unit_rows(n_pairs, 768, 21)
    mapping = fit_ridge(x, y, alpha=alpha)
    reference = Ridge(alpha=alpha, fit_intercept=True, solver="cholesky").fit(
        x.astype(np.float64), y.astype(np.float64)
    )
    np.testing.assert_allclose(mapping.arrays["weight"], reference.coef_.T, atol=1e-5)
    np.testing.assert_allclose(mapping.arrays["bias"], reference.intercept_, atol=1e-5)
    z = unit_rows(9, 512, 22)
    predicted = reference.predict(z.astype(np.float64))
    expected = predicted / np.linalg.norm(predicted, axis=1, keepdims=True)
    out = mapping.apply(z)
    assert out.shape == (9, 768)
    _assert_unit_rows(out)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_fit_ridge_alpha_zero_is_least_squares():
    x, y = unit_rows(200, 16, 23), unit_rows(200, 24, 24)
    mapping = fit_ridge(x, y, alpha=0.0)
    reference = LinearRegression().fit(x.astype(np.float64), y.astype(np.float64))
    np.testing.assert_allclose(mapping.arrays["weight"], reference.coef_.T, atol=1e-5)
    np.testing.assert_allclose(mapping.arrays["bias"], reference.intercept_, atol=1e-5)


def test_fit_ridge_rejects_bad_input():
    with pytest.raises(ValueError):
        fit_ridge(unit_rows(5, 4, 0), unit_rows(5, 6, 1), alpha=-1.0)
    with pytest.raises(ValueError):
        fit_ridge(unit_rows(5, 4, 0), unit_rows(4, 6, 1))
    with pytest.raises(ValueError):
        fit_ridge(unit_rows(1, 4, 0), unit_rows(1, 6, 1))


# ---- Procrustes ----


def test_fit_procrustes_equal_dims_matches_scipy():
    x, y = unit_rows(300, 64, 25), unit_rows(300, 64, 26)
    mapping = fit_procrustes(x, y)
    reference, _ = orthogonal_procrustes(x.astype(np.float64), y.astype(np.float64))
    np.testing.assert_allclose(mapping.arrays["weight"], reference, atol=1e-5)


@pytest.mark.parametrize("n_pairs", [40, 900])  # fewer and more pairs than input dims
def test_fit_procrustes_semi_orthogonal_isometry(n_pairs):
    x, y = unit_rows(n_pairs, 512, 27), unit_rows(n_pairs, 768, 28)
    mapping = fit_procrustes(x, y)
    w = mapping.arrays["weight"].astype(np.float64)
    assert w.shape == (512, 768)
    np.testing.assert_allclose(w @ w.T, np.eye(512), atol=1e-5)
    z = unit_rows(6, 512, 29)
    out = mapping.apply(z)
    assert out.shape == (6, 768)
    _assert_unit_rows(out)
    # An isometry keeps every cosine, e.g. BioLingual's audio-text similarities.
    np.testing.assert_allclose(out @ out.T, z @ z.T, atol=1e-5)
    np.testing.assert_allclose(out, z @ w, atol=1e-5)  # unit in, unit out: no rescaling


def test_fit_procrustes_recovers_planted_map_and_is_optimal():
    rng = np.random.default_rng(30)
    planted = np.linalg.qr(rng.standard_normal((24, 16)))[0].T  # (16, 24), orthonormal rows
    x = unit_rows(100, 16, 31).astype(np.float64)
    mapping = fit_procrustes(x, x @ planted)
    np.testing.assert_allclose(mapping.arrays["weight"], planted, atol=1e-5)

    y = unit_rows(100, 24, 32).astype(np.float64)
    fitted = fit_procrustes(x, y).arrays["weight"].astype(np.float64)
    best = np.linalg.norm(x @ fitted - y)
    for seed in range(20):
        other = np.linalg.qr(np.random.default_rng(seed).standard_normal((24, 16)))[0].T
        assert best <= np.linalg.norm(x @ other - y) + 1e-6


def test_fit_procrustes_centered_is_translation_invariant():
    x, y = unit_rows(80, 8, 33), unit_rows(80, 12, 34)
    a = fit_procrustes(x, y, center=True)
    b = fit_procrustes(x + 3.0, y - 2.0, center=True)
    np.testing.assert_allclose(a.arrays["weight"], b.arrays["weight"], atol=1e-4)
    assert a.config == {"center": True}
    with pytest.raises(ValueError):
        fit_procrustes(unit_rows(10, 12, 0), unit_rows(10, 8, 1))


# ---- MLP ----


def _mlp_data() -> tuple[np.ndarray, np.ndarray]:
    x = unit_rows(96, 16, 35)
    planted = np.random.default_rng(36).standard_normal((16, 24))
    y = np.tanh(x @ planted)
    return x, (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)


def test_fit_mlp_is_deterministic_and_leaves_global_rng_alone():
    x, y = _mlp_data()
    state = torch.get_rng_state()
    a = fit_mlp(x, y, hidden=32, epochs=30, lr=1e-2, seed=3, batch_size=32)
    assert torch.equal(torch.get_rng_state(), state)
    b = fit_mlp(x, y, hidden=32, epochs=30, lr=1e-2, seed=3, batch_size=32)
    c = fit_mlp(x, y, hidden=32, epochs=30, lr=1e-2, seed=4, batch_size=32)
    for name in ("w1", "b1", "w2", "b2"):
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name])
    assert not np.array_equal(a.arrays["w1"], c.arrays["w1"])


def test_fit_mlp_learns_and_applies():
    x, y = _mlp_data()
    untrained = fit_mlp(x, y, hidden=64, epochs=0, seed=0)
    trained = fit_mlp(x, y, hidden=64, epochs=150, lr=1e-2, seed=0, batch_size=None)
    assert trained.arrays["w1"].shape == (16, 64) and trained.arrays["w2"].shape == (64, 24)
    out = trained.apply(x)
    _assert_unit_rows(out)
    cos_trained = float(np.mean(np.sum(out * y, axis=1)))
    cos_untrained = float(np.mean(np.sum(untrained.apply(x) * y, axis=1)))
    assert cos_trained > 0.95 > cos_untrained
    assert trained.config["final_train_loss"] == pytest.approx(1 - cos_trained, abs=1e-4)
    # apply() is the network: GELU(z W1 + b1) W2 + b2, normalised (checked in float64).
    a = {k: v.astype(np.float64) for k, v in trained.arrays.items()}
    h = x.astype(np.float64) @ a["w1"] + a["b1"]
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    expected = h @ a["w2"] + a["b2"]
    np.testing.assert_allclose(
        out, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5
    )


# ---- TextMapping persistence ----


def _all_kinds() -> list[TextMapping]:
    x, y = unit_rows(40, 16, 37), unit_rows(40, 24, 38)
    return [
        fit_ridge(x, y, alpha=2.0),
        fit_procrustes(x, y, center=True),
        fit_mlp(x, y, hidden=8, epochs=2, seed=1),
    ]


@pytest.mark.parametrize("mapping", _all_kinds(), ids=lambda m: m.kind)
def test_text_mapping_round_trips_json_and_npz(mapping):
    mapping.provenance = {"teacher": "imageomics/bioclip-2", "prompt_form": "sci_com"}
    z = unit_rows(5, 16, 39)
    expected = mapping.apply(z)

    as_json = json.loads(json.dumps(mapping.to_dict(arrays_as_lists=True)))
    from_json = TextMapping.from_dict(as_json)
    assert from_json.kind == mapping.kind and from_json.provenance == mapping.provenance
    assert from_json.config == mapping.config
    np.testing.assert_array_equal(from_json.apply(z), expected)

    data = mapping.to_dict()
    buffer = io.BytesIO()
    np.savez(buffer, **data["arrays"])
    buffer.seek(0)
    with np.load(buffer) as npz:
        data["arrays"] = {name: npz[name] for name in npz.files}
    np.testing.assert_array_equal(TextMapping.from_dict(data).apply(z), expected)


def test_text_mapping_validates():
    mapping = _all_kinds()[0]
    with pytest.raises(ValueError):
        mapping.apply(unit_rows(2, 17, 0))
    data = mapping.to_dict()
    with pytest.raises(ValueError):
        TextMapping.from_dict({**data, "kind": "kernel"})
    with pytest.raises(ValueError):
        TextMapping.from_dict({**data, "arrays": {"weight": data["arrays"]["weight"]}})
    with pytest.raises(ValueError):
        TextMapping.from_dict({**data, "format_version": 99})
    assert (mapping.in_dim, mapping.out_dim) == (16, 24)
