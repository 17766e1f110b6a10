"""Every search backend against a brute-force loop, and HNSW against exact search."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from songsight.errors import DataNotFoundError, SongsightError
from songsight.index import exact as exact_module
from songsight.index.search import (
    ExactIndex,
    HNSWIndex,
    VectorIndex,
    build_index,
    load_index,
)
from tests.helpers import brute_force, clustered, recall

# threads=1 keeps the usearch graph build deterministic.
BACKENDS = {
    "exact": (lambda dim, **kw: ExactIndex(dim, **kw), 1.0),
    "hnsw": (lambda dim, **kw: HNSWIndex(dim, threads=1, **kw), 0.99),
}
HAVE_MILVUS = all(importlib.util.find_spec(m) for m in ("pymilvus", "milvus_lite"))
_NEEDS_MILVUS = pytest.mark.skipif(
    not HAVE_MILVUS, reason="the 'milvus' extra: pip install 'songsight[milvus]'"
)


@pytest.fixture(params=[*BACKENDS, pytest.param("milvus", marks=_NEEDS_MILVUS)])
def backend(request, tmp_path):
    """(make_index(dim, **kw), the recall@k it must reach against brute force)."""
    if request.param != "milvus":
        return BACKENDS[request.param]
    from songsight.index.milvus import MilvusIndex

    made: list[MilvusIndex] = []

    def make(dim, **kw):
        # Each index its own embedded Milvus Lite file; FLAT below the threshold is exact.
        made.append(MilvusIndex(dim, tmp_path / f"milvus{len(made)}.db", **kw))
        return made[-1]

    request.addfinalizer(lambda: [index.close() for index in made])
    return make, 1.0


def assert_well_ordered(scores: np.ndarray, ids: np.ndarray) -> None:
    """Descending score, ties by ascending id, padding only at the end."""
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    for s, i in zip(scores, ids, strict=True):
        keys = list(zip(-s.astype(np.float64), i, strict=True))
        assert keys == sorted(keys)
        assert np.all((i == -1) == np.isneginf(s))


def test_matches_brute_force_loop(backend):
    make, min_recall = backend
    gallery = clustered(800, 24, 12, seed=0)
    ids = np.random.default_rng(1).permutation(10_000)[:800]
    queries = clustered(20, 24, 12, seed=2)
    index = make(24)
    index.add(gallery, ids)
    scores, found = index.search(queries, 10)
    ref_scores, ref_ids = brute_force(gallery, queries, 10, ids)
    assert scores.shape == found.shape == (20, 10)
    assert_well_ordered(scores, found)
    assert recall(found, ref_ids) >= min_recall
    # Whatever a backend returns, its scores are the exact inner products of those ids.
    by_id = dict(zip(ids.tolist(), gallery.astype(np.float64), strict=True))
    for q, s, i in zip(queries.astype(np.float64), scores, found, strict=True):
        np.testing.assert_allclose(s, [q @ by_id[j] for j in i], atol=1e-5)
    if min_recall == 1.0:
        np.testing.assert_array_equal(found, ref_ids)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_ties_go_to_the_lower_id(backend):
    make, _ = backend
    rng = np.random.default_rng(3)
    # Entries in {-1/4, 0, 1/4}: every dot product is exact in float32, so ties are real ties.
    bases = rng.integers(-1, 2, (30, 16)).astype(np.float32) / 4
    gallery = np.repeat(bases, 8, axis=0)  # each base 8 times, under scattered ids
    ids = rng.permutation(len(gallery)) * 3 + 5
    index = make(16)
    index.add(gallery, ids)
    scores, found = index.search(bases[:6], 5)
    ref_scores, ref_ids = brute_force(gallery, bases[:6], 5, ids)
    assert_well_ordered(scores, found)
    np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))
    np.testing.assert_array_equal(found, ref_ids)


def test_exact_ties_across_chunk_boundaries(monkeypatch):
    """Tiny blocks force many gallery and query chunks; ties must still resolve by id."""
    monkeypatch.setattr(exact_module, "BLOCK_ELEMENTS", 64)
    monkeypatch.setattr(exact_module, "_QUERY_ROWS", 4)
    monkeypatch.setattr(exact_module, "_F16_CHUNK_ROWS", 8)
    rng = np.random.default_rng(4)
    gallery = rng.integers(-1, 2, (150, 8)).astype(np.float32) / 4
    ids = rng.permutation(150)
    queries = gallery[:9]
    ref_scores, ref_ids = brute_force(gallery, queries, 12, ids)
    for dtype in ("float32", "float16"):
        index = ExactIndex(8, storage_dtype=dtype)
        index.add(gallery, ids)
        scores, found = index.search(queries, 12)
        np.testing.assert_array_equal(found, ref_ids)
        np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))


def test_k_larger_than_index_pads(backend):
    make, _ = backend
    gallery = clustered(7, 8, 2, seed=5)
    index = make(8)
    index.add(gallery, np.arange(10, 17))
    scores, found = index.search(gallery[:3], 10)
    ref_scores, ref_ids = brute_force(gallery, gallery[:3], 10, np.arange(10, 17))
    np.testing.assert_array_equal(found, ref_ids)
    assert np.all(found[:, 7:] == -1) and np.all(np.isneginf(scores[:, 7:]))
    np.testing.assert_allclose(scores[:, :7], ref_scores[:, :7], atol=1e-6)


def test_empty_index_and_empty_query_batch(backend):
    make, _ = backend
    index = make(8)
    scores, found = index.search(np.ones((2, 8), np.float32), 3)
    assert np.all(found == -1) and np.all(np.isneginf(scores))
    index.add(clustered(5, 8, 1, seed=6), np.arange(5))
    scores, found = index.search(np.empty((0, 8), np.float32), 3)
    assert scores.shape == found.shape == (0, 3)


def test_incremental_add_equals_one_build(backend):
    make, min_recall = backend
    gallery = clustered(900, 32, 10, seed=7)
    ids = np.arange(900) * 7
    queries = clustered(25, 32, 10, seed=8)
    whole = ExactIndex(32)
    whole.add(gallery, ids)
    parts = make(32)
    for lo, hi in [(0, 1), (1, 300), (300, 900)]:
        parts.add(gallery[lo:hi], ids[lo:hi])
    assert len(parts) == 900
    _, want = whole.search(queries, 10)
    _, got = parts.search(queries, 10)
    assert recall(got, want) >= min_recall
    # Each vector of the last batch finds itself first.
    _, top1 = parts.search(gallery[850:], 1)
    np.testing.assert_array_equal(top1[:, 0], ids[850:])


def test_save_load_round_trip(backend, tmp_path):
    make, _ = backend
    gallery = clustered(600, 16, 6, seed=9)
    queries = clustered(15, 16, 6, seed=10)
    index = make(16, metadata={"model": "tiny", "revision": "abc"})
    index.add(gallery, np.arange(600) + 100)
    before = index.search(queries, 10)
    index.save(tmp_path / "idx")
    for loaded in (type(index).load(tmp_path / "idx"), load_index(tmp_path / "idx")):
        assert type(loaded) is type(index) and len(loaded) == 600 and loaded.dim == 16
        assert loaded.metadata == {"model": "tiny", "revision": "abc"}
        after = loaded.search(queries, 10)
        np.testing.assert_array_equal(after[0], before[0])
        np.testing.assert_array_equal(after[1], before[1])
    # A loaded index keeps growing.
    loaded.add(gallery[:3] * -1, [1, 2, 3])
    _, top1 = loaded.search(gallery[:3] * -1, 1)
    np.testing.assert_array_equal(top1[:, 0], [1, 2, 3])


def test_any_saved_index_loads_as_exact_but_not_as_hnsw(tmp_path):
    gallery = clustered(300, 16, 4, seed=11)
    hnsw = build_index(gallery, kind="hnsw", threads=1)
    hnsw.save(tmp_path / "h")
    exact = ExactIndex.load(tmp_path / "h")
    np.testing.assert_array_equal(exact.search(gallery[:4], 1)[1][:, 0], [0, 1, 2, 3])
    build_index(gallery, kind="exact").save(tmp_path / "e")
    with pytest.raises(DataNotFoundError, match="no HNSW graph"):
        HNSWIndex.load(tmp_path / "e")
    with pytest.raises(DataNotFoundError, match="missing meta.json"):
        load_index(tmp_path / "nowhere")
    meta_path = tmp_path / "e" / "meta.json"
    meta_path.write_text(
        meta_path.read_text().replace('"format_version": 1', '"format_version": 99')
    )
    with pytest.raises(SongsightError, match="version 99"):
        ExactIndex.load(tmp_path / "e")


def test_float16_storage(backend, tmp_path):
    make, min_recall = backend
    gallery = clustered(700, 32, 8, seed=12)
    queries = clustered(20, 32, 8, seed=13)
    index16 = make(32, storage_dtype="float16")
    index16.add(gallery, np.arange(700))
    index32 = make(32)
    index32.add(gallery, np.arange(700))
    assert index16.storage_dtype == "float16"
    if hasattr(index16, "nbytes"):  # in-process stores; Milvus keeps its rows elsewhere
        assert index16.nbytes - 700 * 8 == (index32.nbytes - 700 * 8) // 2
    scores, found = index16.search(queries, 10)
    # Scores are float32 sums over the float16-rounded gallery, not float16 sums.
    rounded = gallery.astype(np.float16)
    ref_scores, ref_ids = brute_force(rounded, queries, 10, np.arange(700))
    assert recall(found, ref_ids) >= min_recall
    exact_of_found = np.einsum(
        "qd,qkd->qk", queries.astype(np.float64), rounded[found].astype(np.float64)
    )
    np.testing.assert_allclose(scores, exact_of_found, atol=1e-6)
    index16.save(tmp_path / "f16")
    loaded = load_index(tmp_path / "f16")
    assert loaded.storage_dtype == "float16"
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], found)


def test_hnsw_recall_against_exact():
    """Recall@10 of HNSW + re-rank vs exact at default settings on clustered data.

    Isotropic spread inside each cluster leaves many near-equidistant neighbours, which is
    harder for a graph than real embeddings (benchmarks/search.py measures those at scale).
    """
    gallery = clustered(5000, 128, 64, seed=14)
    queries = clustered(200, 128, 64, seed=15)
    exact = build_index(gallery, kind="exact")
    hnsw = build_index(gallery, kind="hnsw", threads=1)
    exact_scores, exact_ids = exact.search(queries, 10)
    scores, found = hnsw.search(queries, 10)
    assert recall(found, exact_ids) >= 0.99
    assert_well_ordered(scores, found)
    # Re-ranking makes the scores of shared hits identical to exact search's.
    same = found == exact_ids
    np.testing.assert_allclose(scores[same], exact_scores[same], atol=1e-6)


def test_build_index_kind_and_threshold():
    gallery = clustered(50, 8, 2, seed=16)
    assert isinstance(build_index(gallery, ann_threshold=50), ExactIndex)
    auto = build_index(gallery, ann_threshold=49, connectivity=8, threads=1)
    assert isinstance(auto, HNSWIndex) and auto.connectivity == 8
    for index in (build_index(gallery, kind="exact"), auto):
        assert isinstance(index, VectorIndex) and len(index) == 50 and index.dim == 8
        np.testing.assert_array_equal(index.search(gallery, 1)[1][:, 0], np.arange(50))
    with pytest.raises(SongsightError, match="kind must be"):
        build_index(gallery, kind="ivf")
    with pytest.raises(SongsightError, match="only apply to kind='hnsw'"):
        build_index(gallery, kind="exact", connectivity=8)


def test_bad_inputs_raise_clear_errors(backend):
    make, _ = backend
    index = make(8)
    good = clustered(4, 8, 1, seed=17)
    with pytest.raises(SongsightError, match="dimension 9, the index holds 8-d"):
        index.add(np.ones((2, 9), np.float32), [0, 1])
    index.add(good, [0, 1, 2, 3])
    with pytest.raises(SongsightError, match="dimension 7, the index holds 8-d"):
        index.search(np.ones((1, 7), np.float32), 1)
    with pytest.raises(SongsightError, match="reshape"):
        index.search(np.ones(8, np.float32), 1)
    with pytest.raises(SongsightError, match="NaN"):
        index.search(np.full((1, 8), np.nan, np.float32), 1)
    with pytest.raises(SongsightError, match="k must be"):
        index.search(good, 0)
    with pytest.raises(SongsightError, match="already in the index"):
        index.add(good[:1], [2])
    with pytest.raises(SongsightError, match="unique"):
        index.add(good[:2], [9, 9])
    with pytest.raises(SongsightError, match=">= 0"):
        index.add(good[:1], [-1])
    with pytest.raises(SongsightError, match="integers"):
        index.add(good[:1], [1.5])
    with pytest.raises(SongsightError, match="float16 storage"):
        make(8, storage_dtype="float16").add(np.full((1, 8), 1e6, np.float32), [0])
    with pytest.raises(SongsightError, match="float32 or float16"):
        make(8, storage_dtype="int8")
    assert len(index) == 4  # failed adds leave the index as it was


def test_missing_usearch_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "usearch.index", None)
    with pytest.raises(SongsightError, match=r"songsight\[ann\]"):
        HNSWIndex(8)


def test_allowed_ids_filter_matches_brute_force_on_the_subset(backend):
    """A species list reaches the index as allowed ids: the answer is the subset's own top k."""
    make, min_recall = backend
    gallery = clustered(3000, 24, 30, seed=18)
    ids = np.arange(3000) * 2 + 1
    queries = clustered(25, 24, 30, seed=19)
    index = make(24, min_candidates=20, rerank_factor=2) if min_recall < 1 else make(24)
    index.add(gallery, ids)
    rng = np.random.default_rng(20)
    # A wide filter (graph path), a narrow one (exact on the subset), one with unknown ids.
    for share in (0.5, 0.02):
        keep = np.sort(rng.choice(3000, int(share * 3000), replace=False))
        allowed = np.concatenate([ids[keep], [10**6, 4]])  # ids the index does not hold are ignored
        scores, found = index.search(queries, 10, allowed_ids=allowed)
        ref_scores, ref_ids = brute_force(gallery[keep], queries, 10, ids[keep])
        assert_well_ordered(scores, found)
        assert set(found.ravel()) - {-1} <= set(ids[keep].tolist())
        assert recall(found, ref_ids) >= min_recall
        if min_recall == 1.0:
            np.testing.assert_array_equal(found, ref_ids)
            np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    # Fewer allowed than k: padded; none allowed: all padding.
    scores, found = index.search(queries[:2], 5, allowed_ids=ids[[7, 9]])
    assert (np.sort(found[:, :2], axis=1) == np.sort(ids[[7, 9]])).all() and (
        found[:, 2:] == -1
    ).all()
    scores, found = index.search(queries[:2], 5, allowed_ids=np.array([], np.int64))
    assert (found == -1).all() and np.isneginf(scores).all()
    with pytest.raises(SongsightError, match="allowed_ids"):
        index.search(queries[:1], 5, allowed_ids=np.array([0.5, 1.5]))
