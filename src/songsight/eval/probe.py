"""Probes of how much class information an embedding carries: linear and k-nearest-neighbour.

Take arrays, return numbers; no torch, no CLI. Labels may be ints or strings.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

# Test rows scored against the training set at once: bounds the (rows, N_train) block.
_KNN_BLOCK_ELEMENTS = 1 << 22


def _check_split(x: ArrayLike, y: ArrayLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    x_arr = np.asarray(x, dtype=np.float64)
    y_arr = np.asarray(y)
    if x_arr.ndim != 2 or y_arr.shape != (x_arr.shape[0],):
        raise ValueError(f"{name}: need x (N, D) and y (N,), got {x_arr.shape} and {y_arr.shape}")
    if x_arr.shape[0] == 0:
        raise ValueError(f"{name} split is empty")
    if not np.isfinite(x_arr).all():
        raise ValueError(f"{name}_x contains NaN or inf")
    return x_arr, y_arr


def linear_probe(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    seed: int = 0,
    *,
    c: float = 1.0,
    max_iter: int = 5000,
) -> dict[str, float]:
    """Standardise, fit multinomial logistic regression on train, score test.

    train_x: (N, D) float; train_y: (N,); test_x: (M, D); test_y: (M,).
    ``c`` is sklearn's inverse L2 strength C. Returns {"accuracy", "macro_f1"}; macro F1
    averages over the classes seen in test labels or predictions (absent ones score 0).
    """
    x_train, y_train = _check_split(train_x, train_y, "train")
    x_test, y_test = _check_split(test_x, test_y, "test")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"train dim {x_train.shape[1]} != test dim {x_test.shape[1]}")
    if np.unique(y_train).size < 2:
        raise ValueError("linear_probe needs at least two classes in train_y")
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=c, max_iter=max_iter, random_state=seed),
    )
    model.fit(x_train, y_train)
    pred = model.predict(x_test)
    return {
        "accuracy": float(accuracy_score(y_test, pred)),
        "macro_f1": float(f1_score(y_test, pred, average="macro", zero_division=0)),
    }


def knn_accuracy(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    k: int = 5,
) -> float:
    """Accuracy of a k-nearest-neighbour vote under cosine similarity.

    train_x: (N, D) float; test_x: (M, D) float (need not be unit norm; zero rows are
    refused). Neighbours tied on similarity are taken in training order. The class with
    most votes wins; a tie between classes goes to the one whose best neighbour ranks
    higher. k above N uses all N training points.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    x_train, y_train = _check_split(train_x, train_y, "train")
    x_test, y_test = _check_split(test_x, test_y, "test")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"train dim {x_train.shape[1]} != test dim {x_test.shape[1]}")
    train_norm = np.linalg.norm(x_train, axis=1, keepdims=True)
    test_norm = np.linalg.norm(x_test, axis=1, keepdims=True)
    if (train_norm == 0).any() or (test_norm == 0).any():
        raise ValueError("cosine similarity is undefined for all-zero embeddings")
    x_train = x_train / train_norm
    x_test = x_test / test_norm

    classes, train_codes = np.unique(y_train, return_inverse=True)
    train_codes = train_codes.reshape(-1)
    n_train, n_classes = x_train.shape[0], classes.size
    k = min(int(k), n_train)
    block = max(1, _KNN_BLOCK_ELEMENTS // n_train)
    predicted = np.empty(x_test.shape[0], dtype=np.int64)
    for start in range(0, x_test.shape[0], block):
        sim = x_test[start : start + block] @ x_train.T
        neighbours = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        codes = train_codes[neighbours]
        rows = np.arange(codes.shape[0])[:, None]
        votes = np.zeros((codes.shape[0], n_classes), dtype=np.int64)
        np.add.at(votes, (np.broadcast_to(rows, codes.shape), codes), 1)
        # Best (lowest) rank at which each class appears; k for classes that do not.
        best_rank = np.full((codes.shape[0], n_classes), k, dtype=np.int64)
        np.minimum.at(best_rank, (np.broadcast_to(rows, codes.shape), codes), np.arange(k))
        predicted[start : start + block] = np.argmax(votes * (k + 1) - best_rank, axis=1)
    return float(np.mean(classes[predicted] == y_test))
