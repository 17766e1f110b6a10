"""Tiny models of the real architectures, saved in the real on-disk formats.

``build_tiny_clap`` writes a transformers ``ClapModel`` folder (config, safetensors weights,
``preprocessor_config.json`` of an unfused HTSAT, and a byte-level BPE tokenizer trained
offline) exactly as ``save_pretrained`` lays out BioLingual, or (``layout="processor"``) as
the installed transformers' ``ClapProcessor.save_pretrained`` does. ``build_tiny_open_clip`` writes an
open_clip folder (``open_clip_config.json`` + ``open_clip_model.safetensors``) as the
BioCLIP-2 Hub repository does. Both load through `songsight.encoders.loading` like the real
models. Nothing is downloaded.

They are the simulated world's pretrained stand-ins (`songsight.sim.teacher`,
`songsight.sim.student`) and the tests' models; ``python -m songsight.testing tiny-models
OUT_DIR`` writes a pair.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Words enough for captions about birds and their sounds; the tokenizer also falls back to bytes.
DEFAULT_CORPUS = (
    "a bird singing song call chirp trill whistle chip warble buzz the sound of recording "
    "with common name Animalia Chordata Aves Passeriformes Corvidae Corvus corax Common Raven "
    "Anseriformes Anatidae Branta canadensis Canada Goose warbler sparrow finch thrush wren "
    "a photo of high low fast slow rising falling repeated notes calling in the distance"
)


@dataclass
class TinyClapSpec:
    """Shape of a tiny CLAP. Defaults run fast on a laptop CPU; the simulation may enlarge them."""

    sample_rate_hz: int = 16_000
    window_s: int = 2
    n_mels: int = 16
    n_fft: int = 512
    hop_length: int = 160
    frequency_min_hz: float = 50.0
    frequency_max_hz: float = 8_000.0
    spec_size: int = 64
    patch_hidden: int = 16
    depths: tuple[int, ...] = (1, 1)
    heads: tuple[int, ...] = (2, 2)
    window_size: int = 4
    text_hidden: int = 32
    text_layers: int = 2
    text_heads: int = 2
    projection_dim: int = 32
    vocab_size: int = 600
    max_text_tokens: int = 64
    padding: str = "repeatpad"
    dropout: float = 0.1  # HTSAT's hidden dropout (BioLingual: 0.1); 0 makes training steps deterministic across ranks
    corpus: list[str] = field(default_factory=lambda: [DEFAULT_CORPUS])


@dataclass
class TinyClipSpec:
    """Shape of a tiny open_clip CLIP (ViT image tower, CLIP text transformer)."""

    embed_dim: int = 48
    image_size: int = 32
    patch_size: int = 8
    vision_width: int = 64
    vision_layers: int = 2
    vision_head_width: int = 32
    text_width: int = 32
    text_layers: int = 2
    text_heads: int = 2
    context_length: int = 77


def build_tokenizer(corpus: Iterable[str], vocab_size: int, max_tokens: int):
    """A RoBERTa-style byte-level BPE tokenizer trained offline, as a transformers fast tokenizer.

    It is wrapped with ``PreTrainedTokenizerFast(tokenizer_object=...)``: building
    ``RobertaTokenizerFast(vocab_file, merges_file)`` from a fresh BPE tokenizes text to nothing.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>"))
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
        model_max_length=max_tokens,
    )


def tiny_clap_config(spec: TinyClapSpec, vocab_size: int, pad_token_id: int):
    from transformers import ClapAudioConfig, ClapConfig, ClapTextConfig

    audio = ClapAudioConfig(
        num_mel_bins=spec.n_mels,
        spec_size=spec.spec_size,
        window_size=spec.window_size,
        patch_embeds_hidden_size=spec.patch_hidden,
        depths=list(spec.depths),
        num_attention_heads=list(spec.heads),
        hidden_size=spec.patch_hidden * 2 ** (len(spec.depths) - 1),
        num_hidden_layers=len(spec.depths),
        projection_dim=spec.projection_dim,
        enable_fusion=False,
        patch_size=4,
        patch_stride=(4, 4),
        hidden_dropout_prob=spec.dropout,
    )
    text = ClapTextConfig(
        vocab_size=vocab_size,
        hidden_size=spec.text_hidden,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        intermediate_size=spec.text_hidden * 4,
        max_position_embeddings=spec.max_text_tokens + 2,
        projection_dim=spec.projection_dim,
        pad_token_id=pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
        hidden_dropout_prob=spec.dropout,
        attention_probs_dropout_prob=spec.dropout,
    )
    return ClapConfig(
        text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=spec.projection_dim
    )


def tiny_feature_extractor(spec: TinyClapSpec):
    from transformers import ClapFeatureExtractor

    return ClapFeatureExtractor(
        feature_size=spec.n_mels,
        sampling_rate=spec.sample_rate_hz,
        hop_length=spec.hop_length,
        max_length_s=spec.window_s,
        fft_window_size=spec.n_fft,
        frequency_min=spec.frequency_min_hz,
        frequency_max=spec.frequency_max_hz,
        truncation="rand_trunc",
        padding=spec.padding,
    )


CLAP_LAYOUTS = ("hub", "processor")


def build_tiny_clap(
    out_dir: str | Path,
    spec: TinyClapSpec | None = None,
    seed: int = 0,
    model=None,
    tokenizer=None,
    layout: str = "hub",
) -> Path:
    """Write a tiny random-init (or the given) ClapModel with processor and tokenizer to ``out_dir``.

    ``tokenizer`` (a transformers fast tokenizer) replaces the one built from ``spec.corpus``.
    ``layout``: ``"hub"`` saves the feature extractor and tokenizer separately, as BioLingual's
    Hub repository holds them (``preprocessor_config.json``); ``"processor"`` saves them through
    the installed transformers' ``ClapProcessor.save_pretrained`` (recent versions nest the
    feature extractor in ``processor_config.json`` and write no ``preprocessor_config.json``).
    """
    import torch
    from transformers import ClapModel, ClapProcessor

    if layout not in CLAP_LAYOUTS:
        raise ValueError(f"layout must be one of {CLAP_LAYOUTS}, not {layout!r}")

    spec = spec or TinyClapSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = build_tokenizer(spec.corpus, spec.vocab_size, spec.max_text_tokens)
    if model is None:
        torch.manual_seed(seed)
        model = ClapModel(tiny_clap_config(spec, len(tokenizer), tokenizer.pad_token_id)).eval()
    model.save_pretrained(out)
    if layout == "processor":
        ClapProcessor(
            feature_extractor=tiny_feature_extractor(spec), tokenizer=tokenizer
        ).save_pretrained(out)
    else:
        # Saved separately, as the BioLingual Hub repo has them: preprocessor_config.json + tokenizer files.
        tiny_feature_extractor(spec).save_pretrained(out)
        tokenizer.save_pretrained(out)
    (out / "songsight_tiny_spec.json").write_text(json.dumps(asdict(spec), indent=1))
    return out


def tiny_open_clip_config(spec: TinyClipSpec) -> dict:
    return {
        "model_cfg": {
            "embed_dim": spec.embed_dim,
            "vision_cfg": {
                "image_size": spec.image_size,
                "layers": spec.vision_layers,
                "width": spec.vision_width,
                "patch_size": spec.patch_size,
                "head_width": spec.vision_head_width,
            },
            "text_cfg": {
                "context_length": spec.context_length,
                "vocab_size": 49408,
                "width": spec.text_width,
                "heads": spec.text_heads,
                "layers": spec.text_layers,
            },
        },
        "preprocess_cfg": {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }


def build_tiny_open_clip(
    out_dir: str | Path, spec: TinyClipSpec | None = None, seed: int = 0, model=None
) -> Path:
    """Write a tiny random-init (or the given) open_clip CLIP as the BioCLIP-2 Hub repo lays it out."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    spec = spec or TinyClipSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = tiny_open_clip_config(spec)
    if model is None:
        torch.manual_seed(seed)
        model = open_clip.CLIP(**cfg["model_cfg"]).eval()
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    return out
