"""Contrastive distillation objectives: student audio embeddings against frozen teacher text.

The student maps a recording into BioCLIP-2's 768-d text space; the teacher gives one unit
text embedding per species (its prompt embedding, computed once). Everything here is a pure
function of tensors: no models, no logging, no argument parsing.

Written by hand rather than taken from transformers' ``ClapModel`` (whose built-in loss uses
the text-to-audio logits twice) so that each term is defined, documented and tested here.

Conventions: every ``*_emb`` input is assumed unit norm along its last axis and is *not*
re-normalised here (normalisation lives in one place, the model's output); ``logit_scale``
is the multiplier applied to cosine similarities, i.e. ``exp`` of the learnable log scale,
as returned by :class:`LogitScale`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

# CLIP's initial temperature and its cap on the logit scale (Radford et al. 2021, sec. 2.5):
# the cap keeps the softmax from collapsing onto one logit early in training.
INIT_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0

LossForm = Literal["class", "batch", "species"]
PositiveMode = Literal["exclusive", "supcon"]
PreserveKind = Literal["cosine", "mse"]


class LogitScale(nn.Module):
    """Learnable log inverse temperature, initialised to ``log(1 / init_temperature)``.

    ``forward()`` returns the multiplier ``exp(min(log_scale, log(max_scale)))``: clamping on
    use (rather than in place after each optimiser step) keeps the module self-contained.
    Above the cap the clamp passes no gradient, so the scale stays pinned at the cap.
    With ``learnable=False`` the value is a buffer and the temperature is fixed.
    """

    def __init__(
        self,
        init_temperature: float = INIT_TEMPERATURE,
        learnable: bool = True,
        max_scale: float = MAX_LOGIT_SCALE,
    ):
        super().__init__()
        if not init_temperature > 0:
            raise ValueError(f"init_temperature must be > 0, got {init_temperature}")
        if not max_scale >= 1.0 / init_temperature:
            raise ValueError(
                f"max_scale {max_scale} is below the initial scale 1/{init_temperature}"
            )
        log_scale = torch.tensor(math.log(1.0 / init_temperature), dtype=torch.float32)
        if learnable:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        self.max_log_scale = math.log(max_scale)

    def forward(self) -> Tensor:
        """The scale multiplier, a 0-d tensor (carries gradient when learnable)."""
        return self.log_scale.clamp(max=self.max_log_scale).exp()

    @property
    def temperature(self) -> float:
        """``1 / scale`` as a Python float, for logging."""
        return float(1.0 / self.forward().detach())


def _check_emb_pair(a: Tensor, b: Tensor, a_name: str, b_name: str) -> None:
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(
            f"{a_name} and {b_name} must be 2-D, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{a_name} and {b_name} differ in width: {tuple(a.shape)} vs {tuple(b.shape)}"
        )


def _check_labels(labels: Tensor, batch_size: int) -> None:
    if labels.ndim != 1 or labels.shape[0] != batch_size:
        raise ValueError(f"labels must have shape ({batch_size},), got {tuple(labels.shape)}")


def _scaled_similarity(a: Tensor, b: Tensor, logit_scale: Tensor | float) -> Tensor:
    sim = a @ b.T
    # Under autocast the matmul comes out in half precision; the softmax wants float32.
    if sim.dtype in (torch.float16, torch.bfloat16):
        sim = sim.float()
    return logit_scale * sim


def class_level_infonce(
    audio_emb: Tensor, class_text_emb: Tensor, labels: Tensor, logit_scale: Tensor | float
) -> Tensor:
    """Cross-entropy of each clip over every training species' teacher text embedding.

    ``audio_emb`` (B, D) and ``class_text_emb`` (C, D), both unit norm; ``labels`` (B,) long
    in ``[0, C)`` picks the positive. Returns the 0-d mean loss. Every species is a negative
    for every clip regardless of batch composition; with C = 1 the loss is identically 0.
    """
    _check_emb_pair(audio_emb, class_text_emb, "audio_emb", "class_text_emb")
    _check_labels(labels, audio_emb.shape[0])
    logits = _scaled_similarity(audio_emb, class_text_emb, logit_scale)
    return F.cross_entropy(logits, labels)


def _multi_positive_nll(logits: Tensor, positive_mask: Tensor, positives: PositiveMode) -> Tensor:
    """Row-wise multi-positive InfoNCE over ``logits`` (B, B); mean over rows."""
    n_positives = positive_mask.sum(dim=1)  # >= 1: the diagonal is always a positive
    if positives == "supcon":
        # Supervised-contrastive "L_out" (Khosla et al. 2020): log-softmax over all
        # columns, averaged over the positives.
        log_prob = F.log_softmax(logits, dim=1)
        per_row = -(log_prob * positive_mask).sum(dim=1) / n_positives
    elif positives == "exclusive":
        # Each positive competes only against the negatives: -log(e^p / (e^p + sum_n e^n)).
        # A finite fill instead of -inf keeps rows without negatives (a single-species
        # batch) free of inf - inf in the backward pass; their loss is exactly 0.
        fill = torch.finfo(logits.dtype).min
        neg_lse = logits.masked_fill(positive_mask, fill).logsumexp(dim=1, keepdim=True)
        per_pair = F.softplus(neg_lse - logits)
        per_row = (per_pair * positive_mask).sum(dim=1) / n_positives
    else:
        raise ValueError(f"positives must be 'exclusive' or 'supcon', got {positives!r}")
    return per_row.mean()


def batch_level_infonce(
    audio_emb: Tensor,
    text_emb: Tensor,
    labels: Tensor,
    logit_scale: Tensor | float,
    positives: PositiveMode = "exclusive",
) -> Tensor:
    """Symmetric in-batch InfoNCE where all items of the same species are positives.

    ``audio_emb`` (B, D) and ``text_emb`` (B, D), unit norm; ``text_emb[i]`` is the teacher
    embedding of item i's species; ``labels`` (B,) species ids. Returns the 0-d mean of the
    audio->text and text->audio losses.

    Row i's positives are the columns j with ``labels[j] == labels[i]`` (always including j = i),
    its negatives the other species. ``positives`` chooses how several positives count:

    - ``"exclusive"`` (default): mean over positives p of ``-log(e^p / (e^p + sum_neg e^n))``;
      other positives are neither positives nor negatives for p. Chosen because same-species
      teacher columns are identical vectors: counted in the denominator (SupCon) they put a
      floor of ``log k`` on a row with k same-species items, so the loss and its gradient
      depend on how many of a species happen to share the batch. Here the floor is 0.
    - ``"supcon"``: mean over positives of the full log-softmax (Khosla et al. 2020, L_out).

    Negatives count once per item, so a species weighs as a negative in proportion to its
    share of the batch (in-batch sampling; :func:`class_level_infonce` weighs all equally).
    With all-distinct labels both modes reduce to the CLIP loss. A single-species batch has
    no negatives: "exclusive" returns exactly 0 (zero gradient); "supcon" is >= ``log B`` and
    only pulls the same-species items towards each other.
    """
    _check_emb_pair(audio_emb, text_emb, "audio_emb", "text_emb")
    if audio_emb.shape[0] != text_emb.shape[0]:
        raise ValueError(
            f"audio_emb and text_emb need one row per item: {tuple(audio_emb.shape)} vs {tuple(text_emb.shape)}"
        )
    _check_labels(labels, audio_emb.shape[0])
    logits = _scaled_similarity(audio_emb, text_emb, logit_scale)
    positive_mask = labels[:, None] == labels[None, :]  # symmetric, so it serves both directions
    audio_to_text = _multi_positive_nll(logits, positive_mask, positives)
    text_to_audio = _multi_positive_nll(logits.T, positive_mask, positives)
    return (audio_to_text + text_to_audio) / 2


def preservation_loss(
    student_emb: Tensor, original_emb: Tensor, kind: PreserveKind = "cosine"
) -> Tensor:
    """Distance of the student's audio embedding from the original BioLingual one.

    ``student_emb`` and ``original_emb`` (B, d). ``"cosine"``: mean of ``1 - cos`` (scale-free);
    ``"mse"``: mean squared error over all elements (for unit vectors ``= (2 - 2 cos) / d``).
    ``original_emb`` is detached: it is a fixed target, never trained towards the student.
    """
    if student_emb.shape != original_emb.shape or student_emb.ndim != 2:
        raise ValueError(
            f"student_emb and original_emb must share a 2-D shape: {tuple(student_emb.shape)} vs {tuple(original_emb.shape)}"
        )
    target = original_emb.detach()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student_emb, target, dim=1)).mean()
    if kind == "mse":
        return F.mse_loss(student_emb, target)
    raise ValueError(f"kind must be 'cosine' or 'mse', got {kind!r}")


def target_loss(
    audio_emb: Tensor,
    class_text_emb: Tensor,
    labels: Tensor,
    kind: PreserveKind = "cosine",
) -> Tensor:
    """Distance of each clip's embedding from its own species' teacher text embedding.

    ``audio_emb`` (B, D) and ``class_text_emb`` (C, D), unit norm; ``labels`` (B,) rows of
    ``class_text_emb``. ``"cosine"``: mean ``1 - cos``; ``"mse"``: mean squared error over all
    elements. The contrastive terms only rank a clip's species above the others, which a
    clip can satisfy far from its target (where the photos of its species are not); this
    term pulls it onto the target itself. The teacher side is fixed (detached).
    """
    _check_emb_pair(audio_emb, class_text_emb, "audio_emb", "class_text_emb")
    _check_labels(labels, audio_emb.shape[0])
    target = class_text_emb.detach()[labels]
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(audio_emb, target, dim=1)).mean()
    if kind == "mse":
        return F.mse_loss(audio_emb, target)
    raise ValueError(f"kind must be 'cosine' or 'mse', got {kind!r}")


def _all_gather_cat(tensor: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group=group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward hands each rank the sum over ranks of its shard's gradient.

    Written here (about ten lines) rather than using ``torch.distributed.nn.functional``'s
    all_gather, which torch 2.14 deprecates; all_reduce in the backward works on every
    backend, gloo included (which lacks reduce-scatter).
    """

    @staticmethod
    def forward(ctx, tensor: Tensor, group: dist.ProcessGroup | None) -> Tensor:
        ctx.group = group
        ctx.rows = tensor.shape[0]
        ctx.rank = dist.get_rank(group=group)
        return _all_gather_cat(tensor, group)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:
        # Cloned because all_reduce works in place and autograd may share grad_output.
        summed = grad_output.contiguous().clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM, group=ctx.group)
        return summed[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None


def gather_with_grad(tensor: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Concatenate ``tensor`` (b, ...) from every rank along dim 0 -> (world * b, ...).

    Identity when torch.distributed is not initialised or has one rank. Every rank must pass
    the same shape (drop the last incomplete batch). Rows come in rank order, so rank r's
    shard is ``[r * b, (r + 1) * b)``. Every rank must also run the backward pass (it holds
    a collective), as DDP training does.

    Gradients flow back to the local shard: the backward pass sums, over ranks, the gradient
    each rank's loss sends to this shard. When every rank computes the same global loss L,
    the local shard therefore receives ``world * dL/dshard``, and DDP's gradient averaging
    turns that into exactly the single-process gradient of L.
    Tensors that do not require grad (labels) are gathered without autograd.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    if dist.get_world_size(group=group) == 1:
        return tensor
    if tensor.requires_grad:
        return _GatherWithGrad.apply(tensor, group)
    return _all_gather_cat(tensor, group)


class DistillationLoss(nn.Module):
    """Contrastive distillation term plus an optional preservation term.

    ``form="class"``: :func:`class_level_infonce` against every species' teacher embedding.
    ``form="species"``: for a head that scores species itself (the cascade head,
    `songsight.encoders.distilled.cascade_head`): cross-entropy of its species logits over the
    candidates (``species_logits`` (B, C), given to `forward`), the contrastive term of audio
    against the species prototypes it starts from BioLingual's text; the output, a mix of the
    teacher's species texts, lands on its species' text as the right species' share grows.
    The temperature (``logit_scale``) is then fitted by the class-level term on the output
    held fixed (detached): it is the readouts' (`songsight.readout`), not the head's.
    ``form="batch"``: :func:`batch_level_infonce` against the teacher embeddings of the
    batch's own species, over the batch gathered from all ranks when ``gather`` is set and
    torch.distributed is running (every rank then computes the same global loss).
    ``preserve_weight`` > 0 adds ``preserve_weight * preservation_loss(...)``;
    ``target_weight`` > 0 adds ``target_weight * target_loss(...)`` over the same rows.
    """

    def __init__(
        self,
        form: LossForm = "class",
        preserve_weight: float = 0.0,
        preserve_kind: PreserveKind = "cosine",
        positives: PositiveMode = "exclusive",
        gather: bool = True,
        target_weight: float = 0.0,
        target_kind: PreserveKind = "cosine",
    ):
        super().__init__()
        if form not in ("class", "batch", "species"):
            raise ValueError(f"form must be 'class', 'batch' or 'species', got {form!r}")
        for name, kind in (("preserve_kind", preserve_kind), ("target_kind", target_kind)):
            if kind not in ("cosine", "mse"):
                raise ValueError(f"{name} must be 'cosine' or 'mse', got {kind!r}")
        if positives not in ("exclusive", "supcon"):
            raise ValueError(f"positives must be 'exclusive' or 'supcon', got {positives!r}")
        for name, w in (("preserve_weight", preserve_weight), ("target_weight", target_weight)):
            if not w >= 0:
                raise ValueError(f"{name} must be >= 0, got {w}")
        self.form = form
        self.preserve_weight = float(preserve_weight)
        self.preserve_kind = preserve_kind
        self.positives = positives
        self.gather = gather
        self.target_weight = float(target_weight)
        self.target_kind = target_kind

    def forward(
        self,
        audio_emb: Tensor,
        labels: Tensor,
        class_text_emb: Tensor,
        logit_scale: Tensor | float,
        student_base_emb: Tensor | None = None,
        original_emb: Tensor | None = None,
        species_logits: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Total loss (0-d) and its components as floats.

        ``audio_emb`` (B, D) student output in teacher space, unit norm; ``labels`` (B,) long;
        ``class_text_emb`` (C, D) teacher species embeddings, unit norm; ``student_base_emb``
        and ``original_emb`` (B, d): the student's and the frozen original BioLingual audio
        embeddings, needed only when ``preserve_weight`` > 0.
        ``species_logits`` (B, C): the head's own species logits, for ``form="species"``.
        Components: ``contrastive``, ``calibration`` (species form), ``target`` and
        ``preserve`` (when weighted), ``total``, ``logit_scale``.
        """
        extra = {}
        if self.form == "species":
            if species_logits is None:
                raise ValueError("form='species' needs the head's species_logits (a cascade head)")
            contrastive = F.cross_entropy(species_logits.float(), labels)
            calibration = class_level_infonce(
                audio_emb.detach(), class_text_emb, labels, logit_scale
            )
            extra["calibration"] = calibration
        elif self.form == "class":
            contrastive = class_level_infonce(audio_emb, class_text_emb, labels, logit_scale)
        else:
            if self.gather:
                audio_emb = gather_with_grad(audio_emb)
                labels = gather_with_grad(labels)
            text_emb = class_text_emb[labels]
            contrastive = batch_level_infonce(
                audio_emb, text_emb, labels, logit_scale, positives=self.positives
            )
        total = contrastive
        components = {"contrastive": float(contrastive.detach())}
        for name, term in extra.items():  # trains the temperature alone (the output is detached)
            total = total + term
            components[name] = float(term.detach())
        if self.target_weight > 0:
            # On the same rows as the contrastive term: gathered across ranks in batch form, so
            # every rank logs and differentiates the same global loss.
            target = target_loss(audio_emb, class_text_emb, labels, self.target_kind)
            total = total + self.target_weight * target
            components["target"] = float(target.detach())
        if self.preserve_weight > 0:
            if student_base_emb is None or original_emb is None:
                raise ValueError("preserve_weight > 0 needs student_base_emb and original_emb")
            preserve = preservation_loss(student_base_emb, original_emb, self.preserve_kind)
            total = total + self.preserve_weight * preserve
            components["preserve"] = float(preserve.detach())
        components["total"] = float(total.detach())
        components["logit_scale"] = float(torch.as_tensor(logit_scale).detach())
        return total, components
