"""Linear and kNN probes checked against sklearn and a brute-force vote."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

from songsight.eval.probe import knn_accuracy, linear_probe


def blobs(seed, n_per_class=30, n_classes=4, dim=8, spread=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(n_classes, dim))
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = centres[y] + rng.normal(scale=spread, size=(y.size, dim))
    order = rng.permutation(y.size)
    return x[order], y[order]


def test_linear_probe_separable_blobs_string_labels():
    x, y = blobs(0, spread=0.3)
    names = np.array(["wren", "jay", "crow", "finch"])[y]
    got = linear_probe(x[:80], names[:80], x[80:], names[80:])
    assert got == {"accuracy": 1.0, "macro_f1": 1.0}


def test_linear_probe_matches_reference_fit_on_overlapping_data():
    x, y = blobs(1, spread=3.0)
    got = linear_probe(x[:80], y[:80], x[80:], y[80:], c=0.5)
    # Independent reference: standardise by hand with train statistics, then fit.
    mean, std = x[:80].mean(axis=0), x[:80].std(axis=0)
    model = LogisticRegression(C=0.5, max_iter=5000).fit((x[:80] - mean) / std, y[:80])
    pred = model.predict((x[80:] - mean) / std)
    assert got["accuracy"] == pytest.approx(np.mean(pred == y[80:]))
    assert got["macro_f1"] == pytest.approx(f1_score(y[80:], pred, average="macro"))
    assert 0.25 < got["accuracy"] < 1.0
    assert linear_probe(x[:80], y[:80], x[80:], y[80:], c=0.5) == got  # deterministic


def test_linear_probe_rejects_bad_input():
    x, y = blobs(2)
    with pytest.raises(ValueError, match="two classes"):
        linear_probe(x[:10], np.zeros(10), x[10:20], y[10:20])
    with pytest.raises(ValueError, match="dim"):
        linear_probe(x[:20], y[:20], x[20:30, :4], y[20:30])
    bad = x[:20].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        linear_probe(bad, y[:20], x[20:30], y[20:30])


def brute_force_knn(train_x, train_y, test_x, test_y, k):
    """Reference vote: cosine ranking (ties to lower index), count, tie to best-ranked class."""
    unit_train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    hits = 0
    for x, y in zip(test_x, test_y, strict=True):
        sims = unit_train @ (x / np.linalg.norm(x))
        ranked = sorted(range(len(sims)), key=lambda j: (-sims[j], j))[:k]
        votes = Counter(train_y[j] for j in ranked)
        best = max(votes.values())
        winner = next(train_y[j] for j in ranked if votes[train_y[j]] == best)
        hits += winner == y
    return hits / len(test_y)


@pytest.mark.parametrize("k", [1, 3])
def test_knn_matches_sklearn_when_votes_cannot_tie(k):
    x, y = blobs(3, spread=2.5)
    y = y % 2  # two classes and odd k: no vote ties
    reference = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
    want = reference.fit(x[:70], y[:70]).score(x[70:], y[70:])
    assert knn_accuracy(x[:70], y[:70], x[70:], y[70:], k=k) == pytest.approx(want)


def test_knn_matches_brute_force_with_ties():
    rng = np.random.default_rng(4)
    for _ in range(10):
        # Few distinct directions, so similarities and votes tie often.
        train_x = rng.integers(-1, 2, (25, 3)).astype(float)
        train_x[np.all(train_x == 0, axis=1)] = 1.0
        test_x = rng.integers(-1, 2, (15, 3)).astype(float)
        test_x[np.all(test_x == 0, axis=1)] = 1.0
        train_y = rng.choice(["a", "b", "c"], 25)
        test_y = rng.choice(["a", "b", "c"], 15)
        for k in (1, 2, 4, 6, 40):
            want = brute_force_knn(train_x, train_y, test_x, test_y, min(k, 25))
            assert knn_accuracy(train_x, train_y, test_x, test_y, k=k) == pytest.approx(want)


def test_knn_tie_break_and_errors():
    train_x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    # Query nearest to class 1's point, 2 vs 2 votes at k=4: class 1 wins on rank.
    assert knn_accuracy(train_x, [0, 0, 1, 1], [[0.2, 1.0]], [1], k=4) == 1.0
    assert knn_accuracy(train_x, [0, 0, 1, 1], [[1.0, 0.2]], [0], k=4) == 1.0
    with pytest.raises(ValueError, match="all-zero"):
        knn_accuracy(train_x, [0, 0, 1, 1], [[0.0, 0.0]], [0])
    with pytest.raises(ValueError, match="positive integer"):
        knn_accuracy(train_x, [0, 0, 1, 1], [[1.0, 0.0]], [0], k=0)
