"""Metrics checked against sklearn and brute-force loops, ties and edge cases included."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    ndcg_score,
    roc_auc_score,
    top_k_accuracy_score,
)

from songsight.eval.metrics import (
    average_precision,
    classwise_auroc,
    classwise_map,
    mean_average_precision,
    per_class_ap,
    retrieval_metrics,
    topk_accuracy,
)
from songsight.eval.statistics import summarize

KS = (1, 3, 5, 50)


def brute_force_query(scores, relevant, ks):
    """Reference for one query: rank with ties to the lower index, then plain loops."""
    n = len(scores)
    ranking = sorted(range(n), key=lambda j: (-scores[j], j))
    rel = [bool(relevant[j]) for j in ranking]
    n_rel = sum(rel)
    out = {}
    if n_rel == 0:
        out["ap"] = out["mrr"] = math.nan
        for k in ks:
            out[f"recall@{k}"] = out[f"precision@{k}"] = out[f"ndcg@{k}"] = math.nan
        return out
    out["ap"] = average_precision_score(np.asarray(relevant, bool), np.asarray(scores))
    out["mrr"] = 1.0 / (rel.index(True) + 1)
    for k in ks:
        top = rel[: min(k, n)]
        out[f"recall@{k}"] = 1.0 if any(top) else 0.0
        out[f"precision@{k}"] = sum(top) / len(top)
        dcg = sum(1.0 / math.log2(i + 2) for i, r in enumerate(top) if r)
        idcg = sum(1.0 / math.log2(i + 2) for i in range(min(n_rel, len(top))))
        out[f"ndcg@{k}"] = dcg / idcg
    return out


def assert_matches_brute_force(sim, q_labels, g_labels, ks=KS, **kwargs):
    got = retrieval_metrics(sim, q_labels, g_labels, ks=ks, **kwargs)
    assert set(got) == {"ap", "mrr"} | {
        f"{m}@{k}" for m in ("recall", "precision", "ndcg") for k in ks
    }
    for i in range(sim.shape[0]):
        scores, gallery = list(sim[i]), list(g_labels)
        if kwargs.get("exclude_self"):
            del scores[i], gallery[i]
        want = brute_force_query(scores, [g == q_labels[i] for g in gallery], ks)
        for key, value in want.items():
            np.testing.assert_allclose(got[key][i], value, atol=1e-9, err_msg=f"{key} query {i}")


# average_precision


def test_average_precision_matches_sklearn_on_tied_scores():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 40))
        scores = np.round(rng.random(n), 1).astype(rng.choice([np.float32, np.float64]))
        relevant = rng.random(n) < rng.random()
        if not relevant.any():
            relevant[rng.integers(n)] = True
        want = average_precision_score(relevant, scores)
        assert average_precision(scores, relevant) == pytest.approx(want, abs=1e-6)


def test_average_precision_tie_is_one_threshold():
    # One tie group holding one relevant and one irrelevant: precision 1/2, whatever the order.
    assert average_precision([0.5, 0.5], [True, False]) == pytest.approx(0.5)
    assert average_precision([0.5, 0.5], [False, True]) == pytest.approx(0.5)
    assert average_precision([0.9, 0.5, 0.5, 0.1], [1, 0, 1, 1]) == pytest.approx(
        (1.0 + 2 / 3 + 3 / 4) / 3
    )


def test_average_precision_edge_cases():
    assert math.isnan(average_precision([0.3, 0.2], [False, False]))
    assert math.isnan(average_precision([], []))
    assert average_precision([0.1, 0.7, 0.7], [True, True, True]) == 1.0
    assert average_precision([3, 1, 2], [False, True, False]) == pytest.approx(1 / 3)  # ints ok
    with pytest.raises(ValueError, match="NaN"):
        average_precision([0.1, np.nan], [True, False])
    with pytest.raises(ValueError, match="shape"):
        average_precision([0.1, 0.2], [True])


# retrieval_metrics


def test_retrieval_metrics_match_brute_force_with_ties_int_labels():
    rng = np.random.default_rng(1)
    for _ in range(20):
        n_q, n_g = int(rng.integers(1, 12)), int(rng.integers(1, 30))
        sim = np.round(rng.uniform(-1, 1, (n_q, n_g)), 1).astype(np.float32)
        q_labels = rng.integers(0, 4, n_q)
        g_labels = rng.integers(0, 4, n_g)
        assert_matches_brute_force(sim, q_labels, g_labels)


def test_retrieval_metrics_string_labels_and_no_relevant_query():
    rng = np.random.default_rng(2)
    g_labels = np.array(["corvus corax", "sitta carolinensis", "poecile atricapillus"] * 5)
    q_labels = np.array(["sitta carolinensis", "turdus migratorius", "corvus corax"])
    sim = np.round(rng.random((3, g_labels.size)), 1)
    assert_matches_brute_force(sim, q_labels, g_labels)
    got = retrieval_metrics(sim, q_labels, g_labels, ks=KS)
    assert all(math.isnan(v[1]) for v in got.values())  # no robin in the gallery
    assert all(not math.isnan(v[0]) for v in got.values())
    # Labels given as Python lists of str work too, and agree.
    listed = retrieval_metrics(sim, list(q_labels), list(g_labels), ks=KS)
    for key in got:
        np.testing.assert_array_equal(listed[key], got[key])


def test_retrieval_metrics_all_relevant_and_k_above_gallery():
    sim = np.array([[0.2, 0.9, 0.2], [0.0, 0.0, 0.0]])
    got = retrieval_metrics(sim, [7, 7], [7, 7, 7], ks=(1, 10))
    for key, value in got.items():
        np.testing.assert_allclose(value, 1.0, err_msg=key)


def test_retrieval_metrics_tie_break_by_gallery_index():
    sim = np.array([[0.5, 0.5, 0.5, 0.1]])
    first = retrieval_metrics(sim, [1], [1, 0, 0, 0], ks=(1,))
    last = retrieval_metrics(sim, [1], [0, 0, 1, 0], ks=(1,))
    assert first["recall@1"][0] == 1.0 and first["mrr"][0] == 1.0
    assert last["recall@1"][0] == 0.0 and last["mrr"][0] == pytest.approx(1 / 3)
    # AP sees one tie group either way.
    assert first["ap"][0] == last["ap"][0] == pytest.approx(1 / 3)


def test_retrieval_metrics_chunking_is_invariant():
    rng = np.random.default_rng(3)
    sim = np.round(rng.random((23, 41)), 2).astype(np.float32)
    q_labels, g_labels = rng.integers(0, 5, 23), rng.integers(0, 5, 41)
    whole = retrieval_metrics(sim, q_labels, g_labels, ks=KS, chunk_size=1000)
    for chunk in (1, 4, 22, None):
        part = retrieval_metrics(sim, q_labels, g_labels, ks=KS, chunk_size=chunk)
        for key in whole:
            np.testing.assert_array_equal(part[key], whole[key], err_msg=f"{key} chunk {chunk}")


def test_ndcg_matches_sklearn_without_ties():
    rng = np.random.default_rng(4)
    sim = rng.random((15, 30))
    q_labels, g_labels = rng.integers(0, 3, 15), rng.integers(0, 3, 30)
    got = retrieval_metrics(sim, q_labels, g_labels, ks=(1, 5, 10, 30))
    for i in range(15):
        relevant = (g_labels == q_labels[i]).astype(float)[None]
        for k in (1, 5, 10, 30):
            want = ndcg_score(relevant, sim[i : i + 1], k=k, ignore_ties=True)
            assert got[f"ndcg@{k}"][i] == pytest.approx(want, abs=1e-9)


def test_exclude_self_matches_brute_force():
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(17, 4))
    sim = np.round(emb @ emb.T, 1)
    labels = rng.integers(0, 3, 17)
    assert_matches_brute_force(sim, labels, labels, exclude_self=True, chunk_size=5)
    # A class with a single member has nothing left to retrieve: NaN.
    got = retrieval_metrics(sim, np.r_[labels[:-1], 9], np.r_[labels[:-1], 9], exclude_self=True)
    assert math.isnan(got["ap"][-1])


def test_retrieval_metrics_rejects_bad_input():
    sim = np.zeros((2, 3))
    with pytest.raises(ValueError, match="differ in kind"):
        retrieval_metrics(sim, [1, 2], ["1", "2", "3"])
    with pytest.raises(ValueError, match="does not match"):
        retrieval_metrics(sim, [1, 2], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[0.1, np.nan, 0.2]]), [1], [1, 2, 3])
    with pytest.raises(ValueError, match="positive integer"):
        retrieval_metrics(sim, [1, 2], [1, 2, 3], ks=(0,))
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(sim, [1, 2], [1, 2, 3], exclude_self=True)


def test_mean_average_precision_and_per_class_ap():
    rng = np.random.default_rng(6)
    sim = np.round(rng.random((12, 20)), 1)
    q_labels = np.array(list("aabbbccddxyy"))
    g_labels = rng.choice(list("abcdy"), 20)
    ap = retrieval_metrics(sim, q_labels, g_labels)["ap"]
    assert math.isnan(ap[q_labels == "x"][0])
    want_map = np.mean([a for a in ap if not math.isnan(a)])
    assert mean_average_precision(sim, q_labels, g_labels) == pytest.approx(want_map)

    per_class = per_class_ap(ap, q_labels)
    assert list(per_class) == ["a", "b", "c", "d", "x", "y"]
    assert all(type(key) is str for key in per_class)
    for label, value in per_class.items():
        members = [a for a, q in zip(ap, q_labels, strict=True) if q == label]
        if label == "x":
            assert math.isnan(value)
        else:
            assert value == pytest.approx(sum(members) / len(members))
    assert list(per_class_ap([0.5, 0.25, 1.0], [3, 1, 3])) == [1, 3]
    assert math.isnan(mean_average_precision(np.ones((1, 2)), [0], [1, 1]))


# summarize


def test_summarize_matches_bootstrap_loop():
    rng = np.random.default_rng(7)
    values = rng.random(50)
    values[[3, 10]] = np.nan
    got = summarize({"ap": values, "recall@1": (values > 0.5).astype(float)}, n_boot=200, seed=3)
    kept = values[~np.isnan(values)]
    draws = np.random.default_rng(3).integers(0, kept.size, size=(200, kept.size))
    means = [kept[row].mean() for row in draws]
    assert got["ap"]["n"] == 48 and isinstance(got["ap"]["n"], int)
    assert got["ap"]["mean"] == pytest.approx(kept.mean())
    assert got["ap"]["ci_low"] == pytest.approx(np.percentile(means, 2.5))
    assert got["ap"]["ci_high"] == pytest.approx(np.percentile(means, 97.5))
    assert got["ap"]["ci_low"] < got["ap"]["mean"] < got["ap"]["ci_high"]
    assert summarize({"ap": values}, n_boot=200, seed=3)["ap"] == got["ap"]


def test_summarize_interval_near_normal_theory():
    values = np.random.default_rng(8).normal(0.6, 0.1, 2000)
    got = summarize({"m": values}, n_boot=1000, seed=0, ci=0.9)["m"]
    half_width = 1.645 * values.std() / math.sqrt(values.size)
    assert got["ci_high"] - got["ci_low"] == pytest.approx(2 * half_width, rel=0.15)


def test_summarize_edge_cases():
    got = summarize({"empty": [np.nan, np.nan], "const": [0.25] * 5, "one": [1.0]}, n_boot=50)
    assert got["empty"]["n"] == 0 and math.isnan(got["empty"]["mean"])
    assert math.isnan(got["empty"]["ci_low"])
    assert got["const"] == {"mean": 0.25, "ci_low": 0.25, "ci_high": 0.25, "n": 5}
    assert got["one"]["ci_low"] == got["one"]["ci_high"] == 1.0
    no_boot = summarize({"m": [0.1, 0.3]}, n_boot=0)["m"]
    assert no_boot["mean"] == pytest.approx(0.2) and math.isnan(no_boot["ci_low"])
    with pytest.raises(ValueError):
        summarize({"m": [0.1]}, ci=1.0)


# topk_accuracy


def brute_force_topk(scores, labels, k):
    hits = 0
    for row, y in zip(scores, labels, strict=True):
        ranking = sorted(range(len(row)), key=lambda c: (-row[c], c))
        hits += y in ranking[:k]
    return hits / len(labels)


def test_topk_accuracy_matches_sklearn_without_ties():
    rng = np.random.default_rng(9)
    scores = rng.normal(size=(200, 7)).astype(np.float32)
    labels = rng.integers(0, 7, 200)
    for k in (1, 2, 5):
        want = top_k_accuracy_score(labels, scores, k=k, labels=np.arange(7))
        assert topk_accuracy(scores, labels, k) == pytest.approx(want)


def test_topk_accuracy_ties_and_edges():
    rng = np.random.default_rng(10)
    for _ in range(20):
        scores = rng.integers(0, 3, (30, 5)).astype(float)
        labels = rng.integers(0, 5, 30)
        for k in (1, 2, 4):
            assert topk_accuracy(scores, labels, k) == pytest.approx(
                brute_force_topk(scores, labels, k)
            )
    assert topk_accuracy(np.zeros((4, 3)), [0, 1, 2, 2], k=3) == 1.0
    assert topk_accuracy(np.zeros((4, 3)), [0, 1, 2, 2], k=10) == 1.0
    assert topk_accuracy(np.zeros((4, 3)), [0, 1, 2, 2], k=1) == 0.25  # class 0 wins ties
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        topk_accuracy(np.zeros((2, 3)), [0, 3])
    with pytest.raises(ValueError, match="integers"):
        topk_accuracy(np.zeros((2, 3)), [0.0, 1.0])


# classwise_map / classwise_auroc


def multilabel_case(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random((60, 8)), 1)
    targets = rng.random((60, 8)) < 0.3
    targets[:, 2] = False  # no positive
    targets[:, 5] = True  # no negative
    return scores, targets


def test_classwise_map_matches_sklearn_per_column():
    scores, targets = multilabel_case(11)
    mean, per_class = classwise_map(scores, targets)
    result = classwise_map(scores, targets)
    np.testing.assert_array_equal(result.skipped, [2])
    for c in range(8):
        if c == 2:
            assert math.isnan(per_class[c])
        else:
            want = average_precision_score(targets[:, c], scores[:, c])
            assert per_class[c] == pytest.approx(want, abs=1e-6)
    assert mean == pytest.approx(np.nanmean(per_class))


def test_classwise_auroc_matches_sklearn_per_column():
    scores, targets = multilabel_case(12)
    mean, per_class = classwise_auroc(scores.astype(np.float32), targets)
    np.testing.assert_array_equal(classwise_auroc(scores, targets).skipped, [2, 5])
    for c in range(8):
        if c in (2, 5):
            assert math.isnan(per_class[c])
        else:
            want = roc_auc_score(targets[:, c], scores[:, c])
            assert per_class[c] == pytest.approx(want, abs=1e-9)
    assert mean == pytest.approx(np.nanmean(per_class))


def test_classwise_edges():
    # All tied: AUROC one half; nothing scorable: NaN mean.
    targets = np.array([[1, 0], [0, 0], [1, 0]], bool)
    mean, per_class = classwise_auroc(np.zeros((3, 2)), targets)
    assert per_class[0] == 0.5 and math.isnan(per_class[1]) and mean == 0.5
    assert math.isnan(classwise_map(np.zeros((3, 1)), np.zeros((3, 1), bool)).mean)
    with pytest.raises(ValueError, match="match"):
        classwise_map(np.zeros((3, 2)), np.zeros((3, 1), bool))


def test_paired_difference_resamples_both_methods_together():
    """Against a brute-force loop: the same query indices for both methods in every resample;
    queries either method cannot score (NaN) are left out of both."""
    from songsight.eval.statistics import BLOCK_ELEMENTS, paired_difference

    rng = np.random.default_rng(5)
    a, b = rng.random(50), rng.random(50)
    a[3] = np.nan
    got = paired_difference(a, b, n_boot=200, seed=7)
    keep = ~np.isnan(a)
    d = a[keep] - b[keep]
    assert got["n"] == 49 and got["diff"] == pytest.approx(d.mean())
    boot = np.random.default_rng(7)
    per_block = max(1, BLOCK_ELEMENTS // 49)
    means = []
    for b0 in range(0, 200, per_block):
        idx = boot.integers(0, 49, size=(min(b0 + per_block, 200) - b0, 49))
        means += [(a[keep][i] - b[keep][i]).mean() for i in idx]
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((lo, hi))
    # Two methods that always move together: a tight interval, though each alone is wide.
    c = rng.random(200)
    tight = paired_difference(c + 0.01, c, n_boot=300, seed=0)
    assert tight["ci_low"] == pytest.approx(0.01) and tight["ci_high"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="same queries"):
        paired_difference(a, b[:10])


def test_soundscape_versus_pairs_species_and_matches_sklearn():
    from sklearn.metrics import average_precision_score

    from songsight.eval.alignment import soundscape_versus

    rng = np.random.default_rng(3)
    targets = rng.random((40, 6)) < 0.3
    targets[0, :5] = True
    targets[:, 5] = False  # no positive window: left out of both
    ref = rng.random((40, 6))
    better = ref + 0.8 * targets
    scores = {"original": ref, "better": better, "same": ref.copy()}
    out = soundscape_versus(scores, dict.fromkeys(scores, targets), "original", n_boot=500, seed=0)
    expected = np.mean(
        [
            average_precision_score(targets[:, c], better[:, c])
            - average_precision_score(targets[:, c], ref[:, c])
            for c in range(5)
        ]
    )
    assert set(out) == {"better", "same"}
    assert out["better"]["n"] == 5 and out["better"]["diff"] == pytest.approx(expected)
    assert 0 < out["better"]["ci_low"] <= out["better"]["diff"] <= out["better"]["ci_high"]
    assert out["same"] == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 5}
