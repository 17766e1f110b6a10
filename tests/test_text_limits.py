"""Texts of any length and script through both text towers: cut to what the tower takes, warned
about once, never a traceback.

The limit is checked against the model itself: transformers' ClapModel text tower is run on
token sequences of growing length to find the longest it accepts, independently of songsight.
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

NAMES = {
    "accents": "Grünling Élégant façade Ñandú",
    "cjk": "ヒヨドリ 鵯 백로 白鹭",
    "emoji": "🐦 bird 🎶 🦆‍⬛",
    "rtl": "عصفور دوري",
    "combining": "Pájaro cantor",  # "a" + combining acute accent
    "empty": "",
    "blank": "   \t ",
    "control": "tab\there\x00nul",
    "long": "Animalia Chordata Aves Passeriformes " * 200,
}


@pytest.fixture(scope="module")
def audio_dir_without_length(tmp_path_factory, tiny_models):
    """The tiny CLAP with a tokenizer that declares no model_max_length (transformers then
    assumes a 'very large integer', as for many Hub tokenizers)."""
    out = tmp_path_factory.mktemp("no-length") / "clap"
    shutil.copytree(tiny_models[0], out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("model_max_length", None)
    cfg_path.write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="module")
def audio_without_length(audio_dir_without_length):
    from songsight.encoders.biolingual import BioLingualEncoder

    enc = BioLingualEncoder(audio_dir_without_length, device="cpu")
    assert enc.tokenizer.model_max_length > 10**9  # the premise: no real limit declared
    return enc


def longest_accepted(text_model, token_id: int, pad_id: int) -> int:
    """The longest input (in tokens) the transformers text tower runs without an error."""
    n = 2
    while True:
        ids = torch.full((1, n + 1), token_id)
        try:
            with torch.no_grad():
                text_model(input_ids=ids, attention_mask=torch.ones_like(ids))
        except (IndexError, RuntimeError):
            return n
        n += 1
        assert n < 10_000


def test_clap_limit_is_what_the_text_tower_takes(audio_without_length):
    enc = audio_without_length
    tok = enc.tokenizer
    word = tok("bird", add_special_tokens=False)["input_ids"][0]
    assert enc.max_text_tokens == longest_accepted(enc.model.text_model, word, tok.pad_token_id)


def test_clap_long_text_equals_its_cut_start(audio_without_length):
    """A text past the limit embeds as transformers' model embeds its first tokens."""
    enc = audio_without_length
    text = NAMES["long"]
    ids = enc.tokenizer(text, truncation=True, max_length=enc.max_text_tokens, return_tensors="pt")
    assert ids["input_ids"].shape[1] == enc.max_text_tokens
    with torch.no_grad():
        pooled = enc.model.text_model(**ids).pooler_output
        ref = torch.nn.functional.normalize(enc.model.text_projection(pooled), dim=-1).numpy()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        np.testing.assert_allclose(enc.embed_texts([text]), ref, atol=1e-5)


def test_a_declared_tokenizer_limit_is_kept(tiny_audio_encoder):
    assert tiny_audio_encoder.max_text_tokens == tiny_audio_encoder.tokenizer.model_max_length


@pytest.mark.parametrize("kind", ["audio", "image"])
def test_cut_is_warned_once_per_encoder(kind, audio_dir_without_length, tiny_models):
    from songsight.encoders.bioclip import BioCLIPEncoder
    from songsight.encoders.biolingual import BioLingualEncoder

    enc = (
        BioLingualEncoder(audio_dir_without_length, device="cpu")
        if kind == "audio"
        else BioCLIPEncoder(tiny_models[1], device="cpu")
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc.embed_texts(["a bird", "short"])
        assert caught == []  # nothing cut, nothing said
        enc.embed_texts([NAMES["long"], NAMES["long"] + "x", "a bird"])
        enc.embed_texts([NAMES["long"]])
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "2 text(s)" in messages[0] and "cut" in messages[0]


def test_open_clip_long_text_equals_open_clip(tiny_image_encoder, tiny_models):
    """BioCLIP's context length: the cut text embeds as open_clip's own tokenizer + model do."""
    import open_clip

    spec = f"local-dir:{tiny_models[1]}"
    model, tokenizer = open_clip.create_model(spec).eval(), open_clip.get_tokenizer(spec)
    assert tiny_image_encoder.context_length == tokenizer.context_length == 77
    texts = [NAMES["long"], "Branta canadensis"]
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1).numpy()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        np.testing.assert_allclose(tiny_image_encoder.embed_texts(texts), ref, atol=1e-5)


@pytest.mark.parametrize("name", list(NAMES))
def test_any_name_embeds_in_both_towers(name, audio_without_length, tiny_image_encoder):
    from songsight.encoders.base import l2_normalize
    from songsight.taxonomy import Species, build_prompts

    text = NAMES[name]
    species = [Species(0, text, text, genus=text), Species(1, "Corvus corax", "Common Raven")]
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        for enc in (audio_without_length, tiny_image_encoder):
            emb = enc.embed_texts([text, "a bird"])
            assert emb.shape == (2, enc.dim) and np.isfinite(emb).all()
            np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
            # The same text alone and in a batch: the same vector.
            np.testing.assert_allclose(enc.embed_texts([text])[0], emb[0], atol=1e-5)
        # Through every prompt format and a template set, as the evaluation builds them.
        for fmt in ("taxon_com", "com", "sci"):
            prompts = build_prompts(species, fmt, "sound")
            flat = [p for row in prompts for p in row]
            emb = l2_normalize(
                audio_without_length.embed_texts(flat).reshape(2, len(prompts[0]), -1).mean(1)
            )
            assert np.isfinite(emb).all()
            assert np.isfinite(tiny_image_encoder.embed_species(species, fmt, "photo")).all()
