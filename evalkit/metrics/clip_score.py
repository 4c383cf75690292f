"""CLIP score: cosine similarity of CLIP image and prompt embeddings (open_clip backbone).

The headline value is the raw cosine (Imagen's convention), averaged per prompt over its
images, then over prompts, with a bootstrap interval over prompts. Other conventions are
reported beside it (see docs/metrics-clip.md):

- ``clip_score_x100``: 100 × the headline value (GLIDE's scale);
- ``clip_score_torchmetrics``: max(100 × mean cosine over images, 0), what torchmetrics'
  ``CLIPScore`` returns (it clamps the mean, not each sample);
- ``hessel_clipscore``: mean over images of 2.5 × max(cos, 0) (Hessel et al. 2021).

State is per prompt (running sums and one cached text embedding), never per image.

The networks run on fixed-shape micro-batches of ``batch_size`` (default 32, independent of
the run's ``--metric-batch-size``; :mod:`evalkit.batching`): images are buffered until complete
micro-batches are available, so micro-batch ``j`` always holds images ``32j … 32j+31`` of the
stream whatever the update split, and the prompts first seen in it are encoded together in one
padded micro-batch. Per-prompt scores are therefore bit-identical for any batch size and update
split (and, on a CPU, any thread count: each micro-batch runs with one intra-op thread).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from evalkit.batching import RowBuffer, map_one_thread, pad_rows, run_in_micro_batches, worker_count
from evalkit.errors import InputError
from evalkit.features.base import FeatureExtractor, device_identity
from evalkit.features.store import FeatureProvider
from evalkit.metrics.base import Metric, MetricContext, MetricResult
from evalkit.metrics.bootstrap import DEFAULT_RESAMPLES, summarize
from evalkit.metrics.clip_models import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    ClipInfo,
    TensorPreprocess,
    as_clip_model,
    load_clip,
)
from evalkit.options import as_int, check_known
from evalkit.suites.base import Item

OPTIONS = ("model", "pretrained", "weights_path", "batch_size")
#: how option errors name this metric
WHERE = "metric 'clip_score'"
HESSEL_W = 2.5
#: images (and prompts) per CLIP forward pass; fixes the low bits, recorded in the manifest
DEFAULT_BATCH_SIZE = 32

SCALE_NOTES = {
    "value": "raw cosine cos(E_I, E_T) in [-1, 1]; mean over a prompt's images, then over prompts (Imagen, Muse)",
    "clip_score_x100": "100 * value (GLIDE)",
    "clip_score_torchmetrics": "max(100 * mean cosine over all images, 0): torchmetrics CLIPScore (clamps the mean)",
    "hessel_clipscore": "mean over all images of 2.5 * max(cos, 0) (Hessel et al. 2021)",
    "per_item": "raw cosine per prompt (mean over its images)",
}


@dataclass
class _PromptState:
    """Running sums for one prompt."""

    prompt: str
    category: str | None
    truncated: bool
    #: raw float32 embedding (half the memory of float64; normalised in float64 when used);
    #: None until the first micro-batch holding one of the prompt's images is scored
    text_features: torch.Tensor | None = None
    cos_sum: float = 0.0
    hessel_sum: float = 0.0
    samples: set[int] = field(default_factory=set)

    def text(self) -> torch.Tensor:
        """The text embedding, which scoring any of the prompt's images computes first."""
        if self.text_features is None:
            raise RuntimeError(f"clip_score: prompt {self.prompt!r} has no text embedding yet")
        return self.text_features


def count_tokens(tokenizer: Any, prompt: str) -> int | None:
    """Tokens the prompt needs including start/end tokens, or None when the tokenizer can't say."""
    encode = getattr(tokenizer, "encode", None)
    if encode is None or not hasattr(tokenizer, "sot_token_id"):
        return None
    return len(encode(prompt)) + 2


class ClipImageEmbeddings(FeatureExtractor):
    """The CLIP score's image embeddings (raw, before normalisation) as a feature extractor, so
    they are computed once per image and kept in the feature store like any other features."""

    layer = "embedding"

    def __init__(self, metric: ClipScore) -> None:
        self.metric = metric
        self.name = f"clip-score-{metric.info.model}"

    @property
    def layers(self) -> dict[str, int]:
        return {self.layer: self.metric.embed_dim}

    @property
    def calibrated(self) -> bool:
        return not self.metric.info.uncalibrated

    def fingerprint(self) -> dict[str, Any]:
        return {
            "extractor": self.name,
            "weights_sha256": self.metric.info.weights_sha256,
            "preprocessing": self.metric.preprocess.recipe(),
            "batch_size": self.metric.batch_size,
            **device_identity(self.metric.device),
        }

    def extract(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        m = self.metric
        feats = run_in_micro_batches(
            m._encode_images, images, size=m.batch_size, workers=m._workers
        )
        return {self.layer: feats.to(torch.float32).numpy()}


class ClipScore(Metric):
    """Streaming CLIP score over (image, prompt) pairs."""

    name = "clip_score"

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: TensorPreprocess,
        tokenizer: Callable[..., torch.Tensor],
        info: ClipInfo,
        *,
        device: str = "cpu",
        batch_size: int = DEFAULT_BATCH_SIZE,
        seed: int = 0,
        n_resamples: int = DEFAULT_RESAMPLES,
        features: FeatureProvider | None = None,
    ) -> None:
        batch_size = as_int(batch_size, "batch_size", WHERE, minimum=1)
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.info = info
        self.device = device
        self.batch_size = batch_size
        self.seed = seed
        self.n_resamples = n_resamples
        self._workers = worker_count(device)
        self._pending = RowBuffer(batch_size, self._score, release=batch_size * self._workers)
        self._prompts: dict[str, _PromptState] = {}
        self._num_images = 0
        self._cos_total = 0.0
        self._hessel_total = 0.0
        self._warned_truncation = False
        #: the run's feature provider (image embeddings computed once and stored); None: direct
        self.features = features
        clip = as_clip_model(model)
        self.embed_dim = int(
            getattr(clip.visual, "output_dim", 0) or clip.text_projection.shape[-1]
        )
        self._extractor = ClipImageEmbeddings(self)
        if features is not None:
            self._extractor = features.shared(self._extractor)

    def extractors(self) -> list[FeatureExtractor]:
        return [self._extractor] if self.features is not None else []

    # ------------------------------------------------------------ encoding

    @torch.inference_mode()
    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Raw float64 image embeddings of exactly ``batch_size`` uint8 images (one micro-batch)."""
        feats = as_clip_model(self.model).encode_image(self.preprocess(images.to(self.device)))
        return feats.to("cpu", torch.float64)

    @torch.inference_mode()
    def _encode_texts(self, prompts: list[str]) -> torch.Tensor:
        """Raw float32 text embeddings of up to ``batch_size`` prompts, run as one padded
        micro-batch (the tokenizer truncates at its context length)."""
        tokens = self.tokenizer(pad_rows(prompts, self.batch_size)).to(self.device)
        return (
            as_clip_model(self.model).encode_text(tokens).to("cpu", torch.float32)[: len(prompts)]
        )

    def _is_truncated(self, prompt: str) -> bool:
        n = count_tokens(self.tokenizer, prompt)
        return n is not None and n > self.info.context_length

    def _register(self, items: Sequence[Item], sample_indices: Sequence[int]) -> None:
        """Check the batch against everything added before and record its prompts and samples."""
        batch: set[tuple[str, int]] = set()
        prompts: dict[str, str] = {}
        for item, k in zip(items, sample_indices, strict=True):
            state = self._prompts.get(item.id)
            known = state.prompt if state is not None else prompts.setdefault(item.id, item.prompt)
            if known != item.prompt:
                raise InputError(f"clip_score: item {item.id!r} came with two different prompts")
            if (item.id, int(k)) in batch or (state is not None and int(k) in state.samples):
                raise InputError(f"clip_score: image {k} of item {item.id!r} was added twice")
            batch.add((item.id, int(k)))
        for item, k in zip(items, sample_indices, strict=True):
            state = self._prompts.get(item.id)
            if state is None:
                state = self._prompts[item.id] = _PromptState(
                    item.prompt, item.category, self._is_truncated(item.prompt)
                )
                if state.truncated and not self._warned_truncation:
                    print(
                        f"warning: clip_score: prompt of item {item.id!r} is longer than CLIP's "
                        f"{self.info.context_length}-token context and was truncated "
                        "(further truncations are counted in the manifest, not reported)",
                        file=sys.stderr,
                    )
                    self._warned_truncation = True
            state.samples.add(int(k))

    def _score(self, images: torch.Tensor, item_ids: list[str]) -> None:
        """Score buffered images (complete micro-batches, or the final flush) into the sums."""
        new_per_chunk: list[list[str]] = []
        assigned: set[str] = set()
        for start in range(0, len(item_ids), self.batch_size):
            new = []
            for i in item_ids[start : start + self.batch_size]:
                if self._prompts[i].text_features is None and i not in assigned:
                    assigned.add(i)
                    new.append(i)
            if new:
                new_per_chunk.append(new)
        texts = map_one_thread(
            self._encode_texts,
            [([self._prompts[i].prompt for i in ids],) for ids in new_per_chunk],
            self._workers,
        )
        for ids, feats in zip(new_per_chunk, texts, strict=True):
            for i, f in zip(ids, feats, strict=True):
                self._prompts[i].text_features = f.clone()
        if self.features is not None:
            stored = self.features.extract(self._extractor, images)[ClipImageEmbeddings.layer]
            feats = torch.from_numpy(stored).to(torch.float64)
        else:
            feats = run_in_micro_batches(
                self._encode_images, images, size=self.batch_size, workers=self._workers
            )
        feats = feats / feats.norm(dim=-1, keepdim=True)
        text = torch.stack([self._prompts[i].text() for i in item_ids]).to(torch.float64)
        text = text / text.norm(dim=-1, keepdim=True)
        cos = (feats * text).sum(-1)
        for i, c in zip(item_ids, cos.tolist(), strict=True):
            state = self._prompts[i]
            hessel = HESSEL_W * max(c, 0.0)
            state.cos_sum += c
            state.hessel_sum += hessel
            self._cos_total += c
            self._hessel_total += hessel
            self._num_images += 1

    # ------------------------------------------------------------ Metric API

    def update(
        self, images: torch.Tensor, items: Sequence[Item], sample_indices: Sequence[int]
    ) -> None:
        """Add uint8 images (B, 3, H, W) with, per image, its item and sample index."""
        if (
            not isinstance(images, torch.Tensor)
            or images.dtype != torch.uint8
            or images.ndim != 4
            or images.shape[1] != 3
        ):
            shape = (
                tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            )
            raise InputError(f"clip_score: expected uint8 images (B, 3, H, W), got {shape}")
        if not (len(items) == len(sample_indices) == images.shape[0]):
            raise InputError(
                f"clip_score: {images.shape[0]} images but {len(items)} items and {len(sample_indices)} sample indices"
            )
        if images.shape[0] == 0:
            return
        self._register(items, sample_indices)
        self._pending.add(images.cpu(), [item.id for item in items])

    def compute(self) -> MetricResult:
        """Mean raw cosine over prompts, with its bootstrap interval and the other scales."""
        self._pending.flush()
        scored = {i: s for i, s in self._prompts.items() if s.samples}
        if not scored:
            raise InputError("clip_score: no images were scored")
        per_item = {i: s.cos_sum / len(s.samples) for i, s in scored.items()}
        categories = {i: s.category for i, s in scored.items()}
        value, interval, per_category = summarize(
            per_item, categories, n_resamples=self.n_resamples, seed=self.seed
        )
        mean_cos_images = self._cos_total / self._num_images
        values = {
            "clip_score_x100": 100.0 * value,
            "clip_score_torchmetrics": max(100.0 * mean_cos_images, 0.0),
            "hessel_clipscore": self._hessel_total / self._num_images,
        }
        return MetricResult(
            name=self.name,
            value=value,
            interval=interval,
            values=values,
            per_item=per_item,
            per_category=per_category,
            manifest=self._manifest(scored),
            uncalibrated=self.info.uncalibrated,
        )

    def _manifest(self, scored: Mapping[str, _PromptState]) -> dict[str, Any]:
        counts = [len(s.samples) for s in scored.values()]
        return {
            "implementation": "evalkit.metrics.clip_score (open_clip encode_image/encode_text, cosine in float64)",
            "backbone": self.info.model,
            "pretrained": self.info.pretrained,
            "weights_sha256": self.info.weights_sha256,
            "weights_source": self.info.weights_source,
            "open_clip_version": self.info.open_clip_version,
            "torch_version": torch.__version__,
            "scale": SCALE_NOTES,
            "aggregation": "per-prompt mean over its images, then mean over prompts; "
            f"95% percentile bootstrap over prompts ({self.n_resamples} resamples)",
            "seed": self.seed,
            "preprocessing": self.preprocess.recipe(),
            # images (and prompts) per forward pass, the last padded: fixes the low bits
            "batch_size": self.batch_size,
            "context_length": self.info.context_length,
            "num_images": self._num_images,
            "num_prompts": len(scored),
            "images_per_prompt": {"min": min(counts), "max": max(counts)},
            "truncated_prompts": sum(1 for s in scored.values() if s.truncated),
            "truncation_detection": "exact (BPE token count)"
            if count_tokens(self.tokenizer, "a") is not None
            else "unavailable for this tokenizer (prompts are still truncated, not counted)",
        }


def make_clip_score(options: dict[str, Any], context: MetricContext) -> ClipScore:
    """Registry factory. Options: ``model``, ``pretrained``, ``weights_path``, ``batch_size``."""
    check_known(options, OPTIONS, WHERE)
    # checked before the model loads
    batch_size = as_int(
        options.get("batch_size", DEFAULT_BATCH_SIZE), "batch_size", WHERE, minimum=1
    )
    model, preprocess, tokenizer, info = load_clip(
        model_name=str(options.get("model", DEFAULT_MODEL)),
        pretrained=str(options.get("pretrained", DEFAULT_PRETRAINED)),
        weights_path=options.get("weights_path"),
        cache_dir=context.cache_dir,
        device=context.device,
        allow_random_weights=context.allow_random_weights,
    )
    return ClipScore(
        model,
        preprocess,
        tokenizer,
        info,
        device=context.device,
        batch_size=batch_size,
        seed=context.seed,
        features=context.features,
    )
