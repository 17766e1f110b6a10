"""Readouts of the distilled encoder and the run plan, against brute-force references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from songsight.config import DistillConfig
from songsight.distill.plan import plan_run, split_train_val
from songsight.readout import (
    fuse_posteriors,
    prototype_posterior,
    readout_posterior,
    readout_queries,
)
from tests.helpers import unit_rows


def _posterior(rng, n, s):
    p = rng.random((n, s)) ** 3
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


def test_prototype_posterior_is_a_softmax_over_scaled_cosines():
    rng = np.random.default_rng(0)
    emb, text = unit_rows(5, 8, rng), unit_rows(4, 8, rng)
    p = prototype_posterior(emb, text, logit_scale=20.0)
    for i in range(5):
        logits = [20.0 * float(emb[i] @ text[s]) for s in range(4)]
        ref = np.exp(np.array(logits) - max(logits))
        np.testing.assert_allclose(p[i], ref / ref.sum(), rtol=1e-5)


def test_fused_posterior_routes_by_the_cascade_answer():
    """A brute-force loop: cascade answer unseen -> the cascade's row; else the weighted
    geometric mix over the seen species only."""
    rng = np.random.default_rng(1)
    p_d, p_c = _posterior(rng, 40, 6), _posterior(rng, 40, 6)
    seen = np.array([1, 1, 0, 1, 0, 1], bool)
    for w in (0.0, 0.3, 1.0):
        got = fuse_posteriors(p_d, p_c, seen, w)
        for i in range(40):
            if not seen[p_c[i].argmax()]:
                np.testing.assert_allclose(got[i], p_c[i], rtol=1e-6)
                continue
            ref = np.zeros(6)
            for s in range(6):
                if seen[s]:
                    ref[s] = p_d[i, s] ** w * p_c[i, s] ** (1 - w)
            np.testing.assert_allclose(got[i], ref / ref.sum(), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-5)
    # weight 0 answers as the cascade does, on every row
    assert (fuse_posteriors(p_d, p_c, seen, 0.0).argmax(1) == p_c.argmax(1)).all()


def test_soft_gate_keeps_the_cascade_mass_on_species_never_learnt():
    """Brute force: unseen species keep the cascade's probability; the rest of the row is the
    weighted geometric mix over the seen species, scaled to the cascade's seen mass."""
    rng = np.random.default_rng(11)
    p_d, p_c = _posterior(rng, 30, 6), _posterior(rng, 30, 6)
    seen = np.array([1, 1, 0, 1, 0, 1], bool)
    for w in (0.0, 0.4, 1.0):
        got = fuse_posteriors(p_d, p_c, seen, w, gate="soft")
        for i in range(30):
            mix = np.array([p_d[i, s] ** w * p_c[i, s] ** (1 - w) if seen[s] else 0.0 for s in range(6)])  # fmt: skip
            ref = np.where(seen, mix / mix.sum() * p_c[i, seen].sum(), p_c[i])
            np.testing.assert_allclose(got[i], ref, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(fuse_posteriors(p_d, p_c, seen, 0.0, gate="soft"), p_c, rtol=1e-5)


def test_poe_gate_multiplies_likelihood_ratios():
    """Brute force: p(s) ~ p_cascade(s) * (p_distilled(s) / prior(s))^w over every species;
    weight 0 is the cascade, and a species at its prior keeps the cascade's say."""
    from songsight.readout import species_prior

    rng = np.random.default_rng(12)
    p_d, p_c = _posterior(rng, 25, 5), _posterior(rng, 25, 5)
    seen = np.array([1, 1, 1, 0, 0], bool)
    prior = species_prior(p_d)
    np.testing.assert_allclose(prior, p_d.mean(0), rtol=1e-6)
    got = fuse_posteriors(p_d, p_c, seen, 0.6, gate="poe", prior=prior)
    for i in range(25):
        ref = p_c[i] * (p_d[i] / prior) ** 0.6
        np.testing.assert_allclose(got[i], ref / ref.sum(), rtol=1e-4)
    np.testing.assert_allclose(fuse_posteriors(p_d, p_c, seen, 0.0, gate="poe", prior=prior), p_c, rtol=1e-5)  # fmt: skip
    at_prior = np.tile(prior, (25, 1))
    np.testing.assert_allclose(fuse_posteriors(at_prior, p_c, seen, 1.0, gate="poe", prior=prior), p_c, rtol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="prior"):
        fuse_posteriors(p_d, p_c, seen, 0.5, gate="poe")
    with pytest.raises(ValueError, match="gate"):
        fuse_posteriors(p_d, p_c, seen, 0.5, gate="sometimes")


def test_fused_with_nothing_seen_is_the_cascade_and_bad_input_is_refused():
    rng = np.random.default_rng(2)
    p_d, p_c = _posterior(rng, 3, 4), _posterior(rng, 3, 4)
    np.testing.assert_allclose(fuse_posteriors(p_d, p_c, np.zeros(4, bool), 0.5), p_c)
    with pytest.raises(ValueError, match="weight"):
        fuse_posteriors(p_d, p_c, np.ones(4, bool), 1.5)
    with pytest.raises(ValueError, match="posteriors"):
        fuse_posteriors(p_d, p_c[:, :3], np.ones(4, bool), 0.5)


def test_readout_queries_land_on_the_chosen_species_text():
    rng = np.random.default_rng(3)
    emb, text = unit_rows(10, 16, rng), unit_rows(5, 16, rng)
    raw = readout_queries("distilled", emb * 3.0, text, logit_scale=10.0)
    np.testing.assert_allclose(raw, emb, atol=1e-6)
    proto = readout_queries("distilled_proto", emb, text, logit_scale=10.0)
    np.testing.assert_array_equal(proto, text[(emb @ text.T).argmax(1)])
    p_c = _posterior(rng, 10, 5)
    seen = np.array([1, 1, 1, 0, 0], bool)
    fused = readout_queries(
        "fused", emb, text, logit_scale=10.0, p_cascade=p_c, seen=seen, weight=0.5
    )
    post = readout_posterior(
        "fused", emb, text, logit_scale=10.0, p_cascade=p_c, seen=seen, weight=0.5
    )
    np.testing.assert_array_equal(fused, text[post.argmax(1)])
    with pytest.raises(ValueError, match="cascade"):
        readout_queries("fused", emb, text, logit_scale=10.0)


def _manifest(per_species: dict[int, int], files_per_recording: int = 1) -> pd.DataFrame:
    rows = []
    for label, n in per_species.items():
        for r in range(n):
            for k in range(files_per_recording):
                rows.append(
                    {
                        "path": f"s{label}_r{r}_{k}.wav",
                        "label": label,
                        "recording_id": f"{label}-{r}",
                    }
                )
    return pd.DataFrame(rows)


def test_validation_split_is_stratified_grouped_and_spares_small_species():
    df = _manifest({0: 20, 1: 7, 2: 2, 3: 3}, files_per_recording=2)
    train, val, info = split_train_val(df, 0.15, seed=0)
    assert info["group_column"] == "recording_id"
    # no recording on both sides, nothing lost or duplicated
    assert not set(train["recording_id"]) & set(val["recording_id"])
    assert sorted(train["path"].tolist() + val["path"].tolist()) == sorted(df["path"].tolist())
    per = val.groupby("label")["recording_id"].nunique().to_dict()
    assert per == {0: 3, 1: 1, 3: 1}  # round(0.15 * 20) = 3; at least one; 2 recordings: none
    assert info["species_without_val"] == [2]
    assert (train.groupby("label").size() > 0).all() and set(train["label"]) == {0, 1, 2, 3}
    again = split_train_val(df, 0.15, seed=0)[1]
    pd.testing.assert_frame_equal(val, again)
    assert split_train_val(df, 0.0, seed=0)[1].empty
    # A cap gives the surplus back to training, whole recordings, species in turn.
    capped_train, capped, _ = split_train_val(df, 0.5, seed=0, max_val_clips=6)
    assert len(capped) == 6 and capped["label"].nunique() == 3  # one recording of 3 species
    assert not set(capped_train["recording_id"]) & set(capped["recording_id"])
    assert len(capped_train) + len(capped) == len(df)


def test_gate_species_go_to_validation_whole_and_only_when_needed():
    from songsight.distill.plan import carved_val_per_species, gate_species_count

    assert gate_species_count(48, True, 6) == 5
    assert gate_species_count(9, True, 6) == 0  # too few to spare any
    assert gate_species_count(48, False, 6) == 0  # nothing to gate
    assert gate_species_count(48, True, 2) == 0  # validation too small to choose on: no cost
    assert carved_val_per_species(_manifest({0: 40, 1: 20}), 0.15) == 3  # round(0.15 * 20)
    assert carved_val_per_species(_manifest({0: 40, 1: 2}), 0.15) == 0  # one gives none
    df = _manifest({i: 6 for i in range(12)})
    train, val, info = split_train_val(df, 0.15, seed=0, gate_species=2)
    gate = info["gate_species"]
    assert len(gate) == 2 and not set(gate) & set(train["label"])
    assert (val[val["label"].isin(gate)].groupby("label").size() == 6).all()  # whole
    assert set(train["label"]) | set(gate) == set(range(12))
    assert sorted(train["path"].tolist() + val["path"].tolist()) == sorted(df["path"].tolist())
    assert split_train_val(df, 0.15, seed=0, gate_species=2)[2]["gate_species"] == gate


def test_audio_cache_only_when_it_fits(tmp_path, monkeypatch):
    import soundfile as sf

    from songsight.distill import plan

    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16_000 * 10, np.float32), 16_000)  # 10 s
    assert plan.cache_fits([str(wav)] * 100, 48_000, seed=0)  # 100 x 10 s x 48 kHz x 4 B
    monkeypatch.setattr(plan, "CACHE_BUDGET_BYTES", 100 * 10 * 48_000 * 4 - 1)
    assert not plan.cache_fits([str(wav)] * 100, 48_000, seed=0)
    assert plan.cache_fits([str(wav)] * 99, 48_000, seed=0)


def test_run_plan_follows_the_data_size():
    small = plan_run(24, DistillConfig())
    assert small.batch_size == 24 and small.steps_per_epoch == 1
    assert small.total_steps == small.epochs == DistillConfig().max_epochs
    assert any("fewer than a batch" in n for n in small.notes)
    # It once read "100 epochs of 1 steps": counts agree, and a run short of min_steps says so.
    assert "100 epochs of 1 step, 100 steps in all (fewer than the 1,000 steps asked" in small.notes[-1]  # fmt: skip
    mid = plan_run(1920, DistillConfig())
    assert mid.batch_size == 32 and mid.steps_per_epoch == 60
    assert mid.total_steps >= DistillConfig().min_steps and mid.epochs == -(-1000 // 60)
    assert mid.warmup_steps == round(0.05 * mid.total_steps)
    assert "17 epochs of 60 steps, 1,020 steps in all (at least 1,000 steps" in mid.notes[-1]
    big = plan_run(1_000_000, DistillConfig())
    assert big.epochs == 1 and big.total_steps == 1_000_000 // 32
    fixed = plan_run(1920, DistillConfig(epochs=3, warmup_steps=7))
    assert (fixed.epochs, fixed.total_steps, fixed.warmup_steps) == (3, 180, 7)
    two_ranks = plan_run(5, DistillConfig(), world_size=2)
    assert two_ranks.batch_size == 4


def test_fusion_is_chosen_among_those_that_keep_the_unlearnt_species():
    """On validation with gate species, the fusion chosen is the best of those answering the
    gate species within the tolerance of the cascade (a brute-force pass over the grid), not
    the best overall when that one buys the learnt species with the others."""
    from songsight.distill.monitor import UNSEEN_TOLERANCE, Validator, clip_weights

    rng = np.random.default_rng(9)
    text = unit_rows(5, 16, rng)
    labels = np.array([0, 1, 2, 3] * 6 + [4] * 6)
    v = object.__new__(Validator)
    v.labels, v.train_labels, v.species_emb, v.gallery = labels, [0, 1, 2, 3], text, None
    v.seen = np.isin(np.arange(5), v.train_labels)
    v.weights = clip_weights(labels, v.train_labels, 5)
    # The cascade: right on the gate species (species 0 its runner-up); on the others it
    # mistakes half the clips for the gate species.
    p_c = np.full((len(labels), 5), 0.02)
    for i, lab in enumerate(labels):
        if lab == 4:
            p_c[i, 4], p_c[i, 0] = 0.5, 0.4
        else:
            p_c[i, lab], p_c[i, 4] = (0.8, 0.1) if i % 2 else (0.35, 0.55)
    v.p_cascade = p_c / p_c.sum(1, keepdims=True)
    # The distilled model: right on its own species, sure of species 0 on the gate species.
    emb = np.where((labels == 4)[:, None], text[0], text[np.minimum(labels, 3)])
    emb = emb + 0.05 * rng.standard_normal(emb.shape)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    idx = labels
    score, record = v._best_fusion(emb, idx, logit_scale=20.0)
    grid = {tuple(k.split()): val for k, val in record["val_fusion_grid"].items()}
    cascade_unseen = v._score(text[v.p_cascade.argmax(1)], idx, "unseen")
    allowed = {k: val for k, val in grid.items() if float(k[1]) == 0 or val[1] >= cascade_unseen - UNSEEN_TOLERANCE}  # fmt: skip
    best = max(allowed, key=lambda k: (allowed[k][0], float(k[1])))
    assert (record["val_fusion_gate"], record["val_fusion_weight"]) == (best[0], float(best[1]))
    assert score == pytest.approx(allowed[best][0])
    assert (
        max(v[0] for v in grid.values()) > score
    )  # a fusion that loses the gate species scored higher overall
