"""BioCLIP-2 (open_clip): images and species names into its 768-d space. A frozen teacher.

Image preprocessing is chosen by ``preprocess``:

- ``"model"`` (default): the transform the checkpoint's own ``open_clip_config.json``
  declares (BioCLIP-2: resize the short side to 224, centre crop, CLIP mean/std). This is
  what open_clip and the BioCLIP-2 authors' evaluation code apply, so embeddings match the
  space the published numbers were measured in.
- ``"squash"``: resize to 224x224 without cropping, as pybioclip does; keeps the whole frame
  (a bird near the edge of a wide photo is not cut off) at the cost of aspect distortion.

The choice is recorded in `provenance`. The teacher is frozen: parameters never require
grad, the module is kept in eval mode, and every forward runs under ``inference_mode``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from songsight.encoders.base import (
    autocast_dtype,
    choose_device,
    l2_normalize,
    warn_truncated,
)
from songsight.encoders.image_batches import BatchedImageEncoder
from songsight.encoders.loading import (
    BIOCLIP2_ID,
    ResolvedModel,
    check_model_folder,
    resolve_model,
)
from songsight.encoders.prompts import embed_species_text
from songsight.errors import ModelNotFoundError, one_line
from songsight.prompt_templates import Templates
from songsight.taxonomy import Species

PREPROCESS_MODES = ("model", "squash")


def skip_weight_init():
    """A context in which torch's ``nn.init`` functions do nothing.

    open_clip builds the model at random init and then loads the checkpoint over it
    (``strict=True``: every parameter and persistent buffer is overwritten), so the random
    init only costs time: seconds for ViT-L on a CPU (benchmarks/startup.py). transformers
    uses the same context for its own ``from_pretrained``; without it, plain init.
    """
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5 kept it in modeling_utils
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            from contextlib import nullcontext as no_init_weights
    return no_init_weights()


def load_open_clip(
    model: str | Path | ResolvedModel, device: str = "cpu", preprocess: str = "model"
):
    """(open_clip model in eval mode, image transform, tokenizer, preprocess cfg, ResolvedModel)."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    if preprocess not in PREPROCESS_MODES:
        raise ValueError(f"preprocess must be one of {PREPROCESS_MODES}, not {preprocess!r}")
    resolved = model if isinstance(model, ResolvedModel) else resolve_model(str(model), "image")
    # open_clip builds a random-init model when the folder has no weights (a logged warning
    # only): the check refuses that, and load errors become one line.
    check_model_folder(resolved.path, "image")
    spec = f"local-dir:{resolved.path}"
    try:
        with skip_weight_init():
            net = open_clip.create_model(spec, device=device)
        tokenizer = open_clip.get_tokenizer(spec)
    except Exception as exc:  # safetensors, json, torch each raise their own types
        raise ModelNotFoundError(
            f"{resolved.path}: open_clip could not load it: {one_line(exc)}"
        ) from None
    overlay = dict(open_clip.get_model_preprocess_cfg(net))
    if preprocess == "squash":
        overlay["resize_mode"] = "squash"
    cfg = PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(), overlay))
    transform = image_transform_v2(cfg, is_train=False)
    return net.eval(), transform, tokenizer, cfg, resolved


class BioCLIPEncoder(BatchedImageEncoder):
    """BioCLIP-2 image and text embeddings, (N, 768) float32 unit norm."""

    def __init__(
        self,
        model: str | Path | ResolvedModel = BIOCLIP2_ID,
        device: str | None = None,
        batch_size: int | None = None,
        preprocess: str = "model",
        decode_threads: int = 2,
        precision: str = "auto",
        prep_workers: int | None = None,
    ):
        """``batch_size``: default 32 on a CPU, 256 on a GPU. ``prep_workers``: processes that
        decode and preprocess photos (`songsight.encoders.image_batches`); default 0 on a CPU
        (``decode_threads`` threads), on a GPU half the cores, at most 8."""
        if not isinstance(model, ResolvedModel):
            model = resolve_model(
                str(model), "image"
            )  # a missing model fails before any device notice
        self.device = choose_device(device)
        self._model, self.transform, self.tokenizer, self.preprocess_cfg, self.resolved = (
            load_open_clip(model, self.device, preprocess)
        )
        self._model.requires_grad_(False)
        self.preprocess = preprocess
        # bf16 casts the frozen weights once instead of autocasting: under autocast,
        # nn.MultiheadAttention leaves its fast path and on CPU copies the weight per token
        # (ViT-L batch 2: 321 s vs 8 s fp32; benchmarks/embed_throughput.py --profile).
        self.dtype = autocast_dtype(precision, self.device)
        self.precision = "bf16" if self.dtype is not None else "fp32"
        if self.dtype is not None:
            self._model = self._model.to(self.dtype)
        self.quantization = None
        if precision == "int8":
            from songsight.encoders.int8 import check_int8_device
            from songsight.encoders.int8_cache import load_or_quantize_int8

            check_int8_device(self.device)
            # The image tower only: open_clip's text transformer reads its MLP's
            # ``weight.dtype``, a method on a quantised Linear (embed_texts failed), and
            # species texts are embedded once per gallery, so fp32 costs little there.
            self._model.visual, self.quantization = load_or_quantize_int8(
                self._model.visual, self.resolved, "open_clip_visual"
            )
            self.precision = "int8"
        on_gpu = not self.device.startswith("cpu")
        self.batch_size = batch_size or (256 if on_gpu else 32)
        self.decode_threads = decode_threads
        if prep_workers is None:
            prep_workers = min(8, max(1, (os.cpu_count() or 2) // 2)) if on_gpu else 0
        self.prep_workers = max(0, int(prep_workers))
        # The tokenizer pads and cuts to its context length; the model's own (its positional
        # table) bounds it when both are known.
        lengths = [
            getattr(self.tokenizer, "context_length", None),
            getattr(self._model, "context_length", None),
        ]
        self.context_length = min(int(n) for n in lengths if n) if any(lengths) else None
        self.dim = int(
            self._model.text_projection.shape[1]
            if hasattr(self._model, "text_projection") and self._model.text_projection is not None
            else self._model.visual.output_dim
        )

    def _frozen(self):
        """The model in eval mode, whatever a caller did to it (the teacher invariant)."""
        if self._model.training:
            self._model.eval()
        return self._model

    # --- images ----------------------------------------------------------------------------
    def _pixel_transform(self):
        return self.transform

    def _encode(self, pixels) -> np.ndarray:
        """``pixels``: a list of (3, H, W) tensors, or a stacked (B, 3, H, W) one (pinned when
        it comes from worker processes for a GPU: copied asynchronously)."""
        import torch

        x = pixels if isinstance(pixels, torch.Tensor) else torch.stack(pixels)
        x = x.to(self.device, non_blocking=True).to(self.dtype or torch.float32)
        with torch.inference_mode():
            return l2_normalize(self._frozen().encode_image(x).float()).cpu().numpy()

    # --- text ------------------------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(N, 768) float32 unit norm. Texts past the context length (77 tokens for BioCLIP-2)
        are cut to fit, as open_clip's tokenizer does, with one warning per encoder."""
        import torch

        texts = [str(t) for t in texts]
        model = self._frozen()
        out = []
        if self.context_length:
            cut = [t for t in texts if (self._n_tokens(t) or 0) > self.context_length]
            warn_truncated(self, cut, self.context_length)
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                tok = self.tokenizer(texts[i : i + batch_size], self.context_length).to(self.device)
                out.append(l2_normalize(model.encode_text(tok).float()).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def _n_tokens(self, text: str) -> int | None:
        """Tokens ``text`` needs with its start and end tokens, before the tokenizer cuts it;
        None for a tokenizer that cannot say."""
        from open_clip.tokenizer import SimpleTokenizer

        if isinstance(self.tokenizer, SimpleTokenizer):  # BioCLIP-2's: CLIP BPE, sot + eot
            return len(self.tokenizer.encode(text)) + 2
        inner = getattr(self.tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wrapper
        return len(inner(text)["input_ids"]) if callable(inner) else None

    def embed_species(
        self,
        species: Sequence[Species],
        prompt_format: str = "taxon_com",
        templates: str | Sequence[str] | Templates = "none",
    ) -> np.ndarray:
        """(S, 768): each species' prompt through every template, averaged, re-normalised.

        This is BioCLIP's zero-shot classifier construction (templates "openai" = the 80
        ImageNet templates); ``templates`` is anything `resolve_templates` takes.
        """
        return embed_species_text(self, species, prompt_format, templates)
