"""Distillation losses against brute-force Python references, plus a 2-process gloo gather."""

from __future__ import annotations

import datetime
import math
import os
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from songsight.distill.loss import (
    DistillationLoss,
    LogitScale,
    batch_level_infonce,
    class_level_infonce,
    gather_with_grad,
    preservation_loss,
)
from tests.helpers import free_port, unit_rows


def _unit(n: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.from_numpy(unit_rows(n, d, seed, np.float64)).to(dtype)


def _dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True))


def _log_sum_exp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


# ---- references written with plain Python loops, independent of the implementation ----


def _ref_class_level(audio, text, labels, scale) -> float:
    audio, text, labels = audio.tolist(), text.tolist(), labels.tolist()
    total = 0.0
    for a, y in zip(audio, labels, strict=True):
        logits = [scale * _dot(a, t) for t in text]
        total += _log_sum_exp(logits) - logits[y]
    return total / len(audio)


def _ref_multi_positive_direction(sim: list[list[float]], labels: list[int], mode: str) -> float:
    """Row-wise loss of sim[i][j]; positives are j with labels[j] == labels[i]."""
    n = len(sim)
    total = 0.0
    for i in range(n):
        pos = [j for j in range(n) if labels[j] == labels[i]]
        neg = [j for j in range(n) if labels[j] != labels[i]]
        row = 0.0
        for p in pos:
            if mode == "exclusive":
                denominator = [sim[i][p]] + [sim[i][k] for k in neg]
            else:
                denominator = [sim[i][k] for k in range(n)]
            row += _log_sum_exp(denominator) - sim[i][p]
        total += row / len(pos)
    return total / n


def _ref_batch_level(audio, text, labels, scale, mode) -> float:
    audio, text, labels = audio.tolist(), text.tolist(), labels.tolist()
    n = len(audio)
    a2t = [[scale * _dot(audio[i], text[j]) for j in range(n)] for i in range(n)]
    t2a = [[a2t[j][i] for j in range(n)] for i in range(n)]
    return (
        _ref_multi_positive_direction(a2t, labels, mode)
        + _ref_multi_positive_direction(t2a, labels, mode)
    ) / 2


def _ref_clip(audio, text, scale) -> float:
    """CLIP's symmetric loss (Radford et al. 2021, Fig. 3 pseudo-code), targets on the diagonal."""
    logits = (scale * audio @ text.T).tolist()
    n = len(logits)
    a2t = sum(_log_sum_exp(logits[i]) - logits[i][i] for i in range(n)) / n
    t2a = sum(_log_sum_exp([logits[j][i] for j in range(n)]) - logits[i][i] for i in range(n)) / n
    return (a2t + t2a) / 2


# ---- LogitScale ----


def test_logit_scale_init_clamp_and_fixed():
    scale = LogitScale()
    assert float(scale().detach()) == pytest.approx(1 / 0.07, rel=1e-6)
    assert scale.temperature == pytest.approx(0.07, rel=1e-6)
    assert [n for n, _ in scale.named_parameters()] == ["log_scale"]

    with torch.no_grad():
        scale.log_scale.fill_(10.0)
    value = scale()
    assert float(value.detach()) == pytest.approx(100.0, rel=1e-6)
    value.backward()
    assert float(scale.log_scale.grad) == 0.0  # pinned at the cap

    fixed = LogitScale(init_temperature=0.5, learnable=False)
    assert list(fixed.parameters()) == []
    assert "log_scale" in fixed.state_dict()
    assert float(fixed()) == pytest.approx(2.0)

    with pytest.raises(ValueError):
        LogitScale(init_temperature=0.0)
    with pytest.raises(ValueError):
        LogitScale(init_temperature=0.001)  # 1000 > the cap of 100


# ---- class-level ----


@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_class_level_matches_loop(scale):
    audio, text = _unit(7, 5, 0), _unit(4, 5, 1)
    labels = torch.tensor([0, 3, 3, 1, 2, 0, 3])
    got = class_level_infonce(audio, text, labels, scale)
    assert float(got) == pytest.approx(_ref_class_level(audio, text, labels, scale), rel=1e-10)


def test_class_level_single_class_is_zero():
    audio, text = _unit(5, 3, 2), _unit(1, 3, 3)
    loss = class_level_infonce(audio, text, torch.zeros(5, dtype=torch.long), 50.0)
    assert float(loss) == 0.0


def test_class_level_gradcheck_including_scale():
    audio = _unit(4, 3, 4).requires_grad_(True)
    text = _unit(3, 3, 5).requires_grad_(True)
    scale = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([2, 0, 2, 1])
    assert torch.autograd.gradcheck(
        lambda a, t, s: class_level_infonce(a, t, labels, s), (audio, text, scale)
    )


def test_class_level_rejects_bad_shapes():
    with pytest.raises(ValueError):
        class_level_infonce(_unit(3, 4, 0), _unit(2, 5, 1), torch.tensor([0, 1, 0]), 1.0)
    with pytest.raises(ValueError):
        class_level_infonce(_unit(3, 4, 0), _unit(2, 4, 1), torch.tensor([0, 1]), 1.0)


# ---- batch-level ----


@pytest.mark.parametrize("mode", ["exclusive", "supcon"])
@pytest.mark.parametrize("labels", [[0, 1, 0, 2, 1, 0], [4, 4, 7, 4, 1, 1], [3, 2, 1, 0, 5, 6]])
def test_batch_level_matches_loop(mode, labels):
    labels = torch.tensor(labels)
    audio = _unit(len(labels), 5, 6)
    # The teacher gives one embedding per species: same label, same text row.
    species_text = _unit(int(labels.max()) + 1, 5, 7)
    text = species_text[labels]
    got = batch_level_infonce(audio, text, labels, 9.0, positives=mode)
    assert float(got) == pytest.approx(_ref_batch_level(audio, text, labels, 9.0, mode), rel=1e-10)


@pytest.mark.parametrize("mode", ["exclusive", "supcon"])
def test_batch_level_multi_positive_with_distinct_texts_matches_loop(mode):
    # Positives need not share a text vector (e.g. one random prompt template per item).
    labels = torch.tensor([1, 1, 0, 1, 0])
    audio, text = _unit(5, 4, 8), _unit(5, 4, 9)
    got = batch_level_infonce(audio, text, labels, 3.0, positives=mode)
    assert float(got) == pytest.approx(_ref_batch_level(audio, text, labels, 3.0, mode), rel=1e-10)


@pytest.mark.parametrize("mode", ["exclusive", "supcon"])
def test_batch_level_distinct_labels_is_clip_loss(mode):
    audio, text = _unit(6, 4, 10), _unit(6, 4, 11)
    labels = torch.tensor([5, 0, 3, 1, 2, 4])
    got = batch_level_infonce(audio, text, labels, 20.0, positives=mode)
    assert float(got) == pytest.approx(_ref_clip(audio, text, 20.0), rel=1e-10)


def test_batch_level_single_species_batch():
    labels = torch.full((5,), 3)
    audio = _unit(5, 4, 14).requires_grad_(True)
    text = _unit(1, 4, 15).expand(5, 4)
    loss = batch_level_infonce(audio, text, labels, 30.0, positives="exclusive")
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.isfinite(audio.grad).all() and float(audio.grad.abs().max()) == 0.0
    supcon = batch_level_infonce(audio.detach(), text, labels, 30.0, positives="supcon")
    expected = _ref_batch_level(audio.detach(), text, labels, 30.0, "supcon")
    assert float(supcon) == pytest.approx(expected, rel=1e-10)
    assert float(supcon) >= math.log(5)


def test_batch_level_single_species_batch_float32_no_nan():
    labels = torch.zeros(4, dtype=torch.long)
    audio = _unit(4, 8, 16, dtype=torch.float32).requires_grad_(True)
    text = _unit(4, 8, 17, dtype=torch.float32)
    batch_level_infonce(audio, text, labels, 100.0).backward()
    assert torch.isfinite(audio.grad).all()


@pytest.mark.parametrize("mode", ["exclusive", "supcon"])
def test_batch_level_gradcheck(mode):
    labels = torch.tensor([0, 1, 0, 2])
    audio = _unit(4, 3, 18).requires_grad_(True)
    text = _unit(4, 3, 19).requires_grad_(True)
    scale = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, t, s: batch_level_infonce(a, t, labels, s, positives=mode), (audio, text, scale)
    )


def test_batch_level_permutation_invariant():
    labels = torch.tensor([0, 1, 0, 2, 1])
    audio, text = _unit(5, 4, 20), _unit(5, 4, 21)
    perm = torch.tensor([3, 0, 4, 1, 2])
    a = batch_level_infonce(audio, text, labels, 7.0)
    b = batch_level_infonce(audio[perm], text[perm], labels[perm], 7.0)
    assert float(a) == pytest.approx(float(b), rel=1e-12)


def test_batch_level_rejects_bad_mode_and_shapes():
    audio, text, labels = _unit(3, 4, 0), _unit(3, 4, 1), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError):
        batch_level_infonce(audio, text, labels, 1.0, positives="all")
    with pytest.raises(ValueError):
        batch_level_infonce(audio, text[:2], labels, 1.0)


# ---- preservation ----


def test_preservation_cosine_and_mse():
    student, original = _unit(6, 5, 22), _unit(6, 5, 23)
    cos = [_dot(s, o) for s, o in zip(student.tolist(), original.tolist(), strict=True)]
    expected_cos = sum(1 - c for c in cos) / 6
    assert float(preservation_loss(student, original)) == pytest.approx(expected_cos, rel=1e-10)
    # For unit vectors the squared distance is 2 - 2 cos; mse averages over all elements.
    expected_mse = sum(2 - 2 * c for c in cos) / (6 * 5)
    got_mse = preservation_loss(student, original, kind="mse")
    assert float(got_mse) == pytest.approx(expected_mse, rel=1e-10)
    assert float(preservation_loss(student, student.clone())) == pytest.approx(0.0, abs=1e-12)


def test_preservation_target_is_detached_and_bad_input_rejected():
    student = _unit(3, 4, 24).requires_grad_(True)
    original = _unit(3, 4, 25).requires_grad_(True)
    preservation_loss(student, original).backward()
    assert student.grad is not None and original.grad is None
    with pytest.raises(ValueError):
        preservation_loss(student, original, kind="l1")
    with pytest.raises(ValueError):
        preservation_loss(student, original[:2])


# ---- DistillationLoss ----


def test_distillation_loss_class_form_with_preservation():
    labels = torch.tensor([1, 0, 1])
    audio, class_text = _unit(3, 6, 26), _unit(2, 6, 27)
    base, original = _unit(3, 4, 28), _unit(3, 4, 29)
    scale = LogitScale().double()
    loss_fn = DistillationLoss(form="class", preserve_weight=0.5, preserve_kind="mse")
    total, parts = loss_fn(audio, labels, class_text, scale(), base, original)
    contrastive = _ref_class_level(audio, class_text, labels, float(scale().detach()))
    preserve = float(preservation_loss(base, original, kind="mse"))
    assert parts["contrastive"] == pytest.approx(contrastive, rel=1e-9)
    assert parts["preserve"] == pytest.approx(preserve, rel=1e-12)
    assert float(total.detach()) == pytest.approx(contrastive + 0.5 * preserve, rel=1e-9)
    assert parts["total"] == pytest.approx(float(total.detach()))
    assert parts["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-6)
    assert all(isinstance(v, float) for v in parts.values())
    total.backward()
    assert scale.log_scale.grad is not None


def test_distillation_loss_batch_form_uses_teacher_rows_of_labels():
    labels = torch.tensor([2, 0, 2, 1])
    audio, class_text = _unit(4, 6, 30), _unit(3, 6, 31)
    total, parts = DistillationLoss(form="batch")(audio, labels, class_text, 12.0)
    expected = _ref_batch_level(audio, class_text[labels], labels, 12.0, "exclusive")
    assert float(total.detach()) == pytest.approx(expected, rel=1e-10)
    assert set(parts) == {"contrastive", "total", "logit_scale"}


def test_distillation_loss_validates():
    with pytest.raises(ValueError):
        DistillationLoss(form="pairs")
    with pytest.raises(ValueError):
        DistillationLoss(preserve_weight=-1.0)
    loss_fn = DistillationLoss(preserve_weight=1.0)
    with pytest.raises(ValueError):
        loss_fn(_unit(2, 3, 0), torch.tensor([0, 1]), _unit(2, 3, 1), 1.0)


# ---- gather_with_grad ----


def test_gather_with_grad_is_identity_without_distributed():
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x


def _gather_worker(rank: int, world_size: int, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    # A bounded collective timeout turns a mismatch after a failed assert into an error.
    dist.init_process_group(
        "gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=30)
    )
    try:
        rows = slice(rank * 3, (rank + 1) * 3)
        full = torch.arange(world_size * 6, dtype=torch.float64).reshape(world_size * 3, 2)
        local = full[rows].clone().requires_grad_(True)
        gathered = gather_with_grad(local)
        assert torch.equal(gathered.detach(), full)
        weights = torch.linspace(-1.0, 2.0, full.numel(), dtype=torch.float64).reshape(full.shape)
        # Rank-dependent losses: the local shard must receive the sum over ranks.
        ((rank + 1) * (gathered * weights).sum()).backward()
        expected = sum(r + 1 for r in range(world_size)) * weights[rows]
        assert torch.allclose(local.grad, expected)

        labels = gather_with_grad(torch.full((3,), rank))
        assert labels.tolist() == [r for r in range(world_size) for _ in range(3)]

        # DDP semantics: the same global loss on every rank; local grad / world equals the
        # single-process gradient of the global loss.
        audio_full = _unit(4 * world_size, 5, 40)
        labels_full = torch.tensor([0, 1, 0, 2, 1, 3, 3, 0])[: 4 * world_size]
        class_text = _unit(4, 5, 41)
        part = slice(rank * 4, (rank + 1) * 4)
        local_audio = audio_full[part].clone().requires_grad_(True)
        loss, _ = DistillationLoss(form="batch")(local_audio, labels_full[part], class_text, 10.0)
        loss.backward()
        ref_audio = audio_full.clone().requires_grad_(True)
        ref_loss = batch_level_infonce(ref_audio, class_text[labels_full], labels_full, 10.0)
        ref_loss.backward()
        assert torch.allclose(loss, ref_loss)
        assert torch.allclose(local_audio.grad / world_size, ref_audio.grad[part])
    finally:
        # No rank tears down (rank 0 hosts the store) while another still communicates.
        dist.barrier()
        dist.destroy_process_group()


def test_gather_with_grad_two_gloo_processes():
    ctx = mp.spawn(_gather_worker, args=(2, free_port()), nprocs=2, join=False)
    deadline = time.monotonic() + 60
    while not ctx.join(timeout=1):  # raises if a worker failed, with its traceback
        if time.monotonic() > deadline:
            for process in ctx.processes:
                process.kill()
            pytest.fail("gloo workers did not finish within 60 s")


def test_species_form_is_cross_entropy_of_the_heads_logits_and_fits_only_the_temperature():
    """form="species": the contrastive term is plain cross-entropy of the head's own logits
    (a loop reference); the calibration term reads the output detached, so its gradient
    reaches the temperature and nothing upstream."""
    from songsight.distill.loss import DistillationLoss, LogitScale

    rng = np.random.default_rng(4)
    logits = torch.tensor(rng.standard_normal((6, 5)), dtype=torch.float32, requires_grad=True)
    emb = torch.tensor(unit_rows(6, 8, rng), requires_grad=True)
    text = torch.tensor(unit_rows(5, 8, rng))
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    scale = LogitScale(0.07)
    loss, comps = DistillationLoss("species")(emb, labels, text, scale(), species_logits=logits)
    ref = np.mean([
        -math.log(math.exp(logits[i, labels[i]].item()) / np.exp(logits[i].detach().numpy()).sum())
        for i in range(6)
    ])  # fmt: skip
    assert comps["contrastive"] == pytest.approx(ref, rel=1e-5)
    assert comps["total"] == pytest.approx(comps["contrastive"] + comps["calibration"], rel=1e-6)
    loss.backward()
    assert emb.grad is None or float(emb.grad.abs().max()) == 0.0  # calibration: detached
    assert logits.grad is not None and scale.log_scale.grad is not None
    with pytest.raises(ValueError, match="species_logits"):
        DistillationLoss("species")(emb, labels, text, scale())
