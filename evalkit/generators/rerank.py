"""``rerank``: DALL·E-style best-of-N by CLIP score around any registered model.

For every requested image the wrapped (inner) model draws ``n`` candidates, candidate
``i`` from the seed ``derive_seed(request.seed, "rerank-candidate", i)``; each candidate
is scored by the raw cosine of its CLIP image embedding with the prompt's text embedding,
and the best one is returned (the lowest index wins an exact tie). See docs/rerank.md.

Determinism: candidates are generated and scored per request, in fixed chunks of
``batch_size`` candidates (0..bs-1, bs..2bs-1, ...), so a request's pixels do not depend
on which other requests share its ``generate`` call; the inner model runs its own networks on
fixed-shape micro-batches, and CLIP scores every chunk as one micro-batch of exactly
``batch_size`` images (the last chunk padded, :mod:`evalkit.batching`), with one intra-op thread
on a CPU, so scores do not depend on the thread count either. Memory stays flat: one chunk of
candidates plus the current best image per request are held at a time.
"""

from __future__ import annotations

import contextvars
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from evalkit import __version__
from evalkit.batching import run_in_micro_batches, worker_count
from evalkit.errors import GenerationError, MissingWeightsError, UsageError
from evalkit.generators.base import GenerationRequest, Generator, GeneratorContext, check_output
from evalkit.image_plan import request_identity
from evalkit.metrics.clip_models import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    ClipInfo,
    TensorPreprocess,
    as_clip_model,
    load_clip,
)
from evalkit.options import as_int, check_known
from evalkit.registry import MODELS
from evalkit.seeding import derive_seed

NAME = "rerank"
#: the component named in option errors
WHERE = "model 'rerank'"
OPTIONS = (
    "model",
    "model_opts",
    "n",
    "clip_model",
    "clip_pretrained",
    "clip_weights_path",
    "batch_size",
)
DEFAULT_N = 16
DEFAULT_BATCH_SIZE = 16
#: the "item id" slot of :func:`derive_seed` used for candidate seeds
CANDIDATE_KEY = "rerank-candidate"
CODE_VERSION = "rerank-v1"

#: set while a rerank factory builds its inner model, to refuse rerank inside rerank
_BUILDING_INNER: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "evalkit_rerank_building_inner", default=False
)


def candidate_seed(seed: int, index: int) -> int:
    """The seed of candidate ``index`` for a request with seed ``seed``."""
    return derive_seed(seed, CANDIDATE_KEY, index)


def candidate_request(request: GenerationRequest, index: int) -> GenerationRequest:
    """The inner model's request for candidate ``index`` (same item and sample, derived seed)."""
    return GenerationRequest(
        item=request.item,
        sample_index=request.sample_index,
        seed=candidate_seed(request.seed, index),
    )


class RerankGenerator(Generator):
    """Best of ``n`` candidates of an inner generator, by CLIP score against the prompt."""

    name = NAME

    def __init__(
        self,
        inner: Generator,
        inner_name: str,
        clip: tuple[torch.nn.Module, TensorPreprocess, Callable[..., torch.Tensor], ClipInfo],
        context: GeneratorContext,
        *,
        n: int = DEFAULT_N,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        n = as_int(n, "n", WHERE, minimum=1)
        batch_size = as_int(batch_size, "batch_size", WHERE, minimum=1)
        self.inner = inner
        self.inner_name = inner_name
        self.clip_model, self.preprocess, self.tokenizer, self.clip_info = clip
        self.clip_model.eval()
        self.resolution = context.resolution
        self.device = context.device
        self.n = n
        self.batch_size = batch_size
        self.uncalibrated = bool(inner.uncalibrated) or bool(self.clip_info.uncalibrated)
        #: per image of the last ``generate`` call: the chosen candidate and its score
        self.last_selection: list[dict[str, Any]] = []

    @property
    def native_resolution(self) -> int:
        return self.inner.native_resolution

    # ------------------------------------------------------------ identity

    def _scorer(self) -> dict[str, Any]:
        return {
            "backbone": self.clip_info.model,
            "pretrained": self.clip_info.pretrained,
            "weights_sha256": self.clip_info.weights_sha256,
            "preprocessing": self.preprocess.recipe(),
            # the scoring chunk fixes the batch shape CLIP runs at (low bits of the scores)
            "batch_size": self.batch_size,
        }

    def fingerprint(self) -> dict[str, Any]:
        """Inner model's fingerprint, N, the candidate seed rule and the CLIP scorer."""
        return {
            "model": NAME,
            "code": f"evalkit-{__version__}-{CODE_VERSION}",
            "n": self.n,
            "candidate_seeds": f"derive_seed(seed, {CANDIDATE_KEY!r}, i)",
            "selection": "argmax raw cosine (float64), lowest index on ties",
            "scorer": self._scorer(),
            "inner_model": self.inner_name,
            "inner": self.inner.fingerprint(),
        }

    def settings(self) -> dict[str, Any]:
        """N, the scorer and the inner model's own settings."""
        scorer = self._scorer()
        scorer.pop("preprocessing")
        scorer["weights_source"] = self.clip_info.weights_source
        scorer["open_clip_version"] = self.clip_info.open_clip_version
        scorer["uncalibrated"] = self.clip_info.uncalibrated
        return {
            "n": self.n,
            "scorer": scorer,
            "model": self.inner_name,
            "inner": self.inner.settings(),
        }

    def request_identity(self, request: GenerationRequest) -> dict[str, Any]:
        """Prompt (scored against), seed (candidate seeds) and the inner model's own identity."""
        return {
            "prompt": request.prompt,
            "seed": request.seed,
            "inner": request_identity(self.inner, request),
        }

    # ------------------------------------------------------------ scoring

    @torch.inference_mode()
    def _encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        clip = as_clip_model(self.clip_model)
        return clip.encode_text(tokens.to(self.device)).to("cpu", torch.float64)

    @torch.inference_mode()
    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:
        clip = as_clip_model(self.clip_model)
        feats = clip.encode_image(self.preprocess(images.to(self.device)))
        return feats.to("cpu", torch.float64)

    def _text_features(self, prompt: str) -> torch.Tensor:
        """Unit-norm float64 text embedding (encoded alone: a fixed batch shape of one)."""
        feats = run_in_micro_batches(
            self._encode_text, self.tokenizer([prompt]), size=1, workers=worker_count(self.device)
        )[0]
        return feats / feats.norm()

    def _scores(self, images: torch.Tensor, text: torch.Tensor) -> list[float]:
        """Raw cosine of each uint8 image with the unit-norm text embedding; CLIP runs on
        micro-batches of exactly ``batch_size`` images (the last chunk padded)."""
        feats = run_in_micro_batches(
            self._encode_images, images, size=self.batch_size, workers=worker_count(self.device)
        )
        feats = feats / feats.norm(dim=-1, keepdim=True)
        return (feats @ text).tolist()

    # ------------------------------------------------------------ generation

    def generate(self, requests: Sequence[GenerationRequest]) -> torch.Tensor:
        """The best of ``n`` inner candidates per request, uint8 (len(requests), 3, R, R)."""
        r = self.resolution
        out = torch.empty((len(requests), 3, r, r), dtype=torch.uint8)
        selections: list[dict[str, Any]] = []
        texts: dict[str, torch.Tensor] = {}
        for j, request in enumerate(requests):
            text = texts.get(request.prompt)
            if text is None:
                text = texts[request.prompt] = self._text_features(request.prompt)
            best, best_score = -1, -math.inf
            scores: list[float] = []
            for start in range(0, self.n, self.batch_size):
                chunk = [
                    candidate_request(request, i)
                    for i in range(start, min(self.n, start + self.batch_size))
                ]
                images = check_output(
                    self.inner.generate(chunk), len(chunk), r, f"{self.inner_name} (inside rerank)"
                )
                for offset, score in enumerate(self._scores(images, text)):
                    scores.append(score)
                    if score > best_score:  # strict: the lowest index wins a tie; NaN never wins
                        best, best_score = start + offset, score
                        out[j] = images[offset]
                del images
            if best < 0:
                raise GenerationError(
                    f"model 'rerank': every CLIP score of item {request.item.id!r} "
                    f"sample {request.sample_index} is NaN"
                )
            selections.append(
                {
                    "item_id": request.item.id,
                    "sample_index": request.sample_index,
                    "seed": request.seed,
                    "candidate": best,
                    "candidate_seed": candidate_seed(request.seed, best),
                    "clip_score": best_score,
                    "scores": scores,
                }
            )
        self.last_selection = selections
        return out


# ---------------------------------------------------------------- factory


def _inner_options(options: dict[str, Any]) -> dict[str, Any]:
    """``model_opts`` (a dict, or JSON text from the command line) plus ``model_opts.KEY`` keys."""
    raw = options.get("model_opts", {})
    if raw is None:
        raw = {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"model 'rerank': model_opts must be a JSON object, got {raw!r} ({exc.msg})"
            ) from exc
    if not isinstance(raw, dict):
        raise UsageError(
            f"model 'rerank': model_opts must be a dict of the inner model's options, got {raw!r}"
        )
    merged = dict(raw)
    for key, value in options.items():
        if key.startswith("model_opts."):
            merged[key[len("model_opts.") :]] = value
    return merged


def make_rerank_generator(options: dict[str, Any], context: GeneratorContext) -> Generator:
    """Registry factory for ``rerank``.

    Options: ``model`` (registry name of the inner model, required), ``model_opts`` (its
    options; also ``model_opts.KEY=VALUE``), ``n`` (candidates per image, 16),
    ``clip_model`` / ``clip_pretrained`` / ``clip_weights_path`` (the scorer, by default the
    clip_score metric's backbone), ``batch_size`` (candidates generated and scored at once, 16).
    """
    own = {k: v for k, v in options.items() if not k.startswith("model_opts.")}
    try:
        check_known(own, OPTIONS, WHERE)
    except UsageError as exc:
        raise UsageError(f"{exc} (and model_opts.KEY for the inner model's options)") from None
    if _BUILDING_INNER.get():
        raise UsageError("model 'rerank' cannot wrap itself (rerank inside rerank)")
    inner_name = options.get("model")
    if not isinstance(inner_name, str) or not inner_name:
        raise UsageError(
            "model 'rerank': option model (the registry name of the model to rerank) is required, "
            f"e.g. --model-opt model=toy; known models: {', '.join(MODELS.names())}"
        )
    if inner_name == NAME:
        raise UsageError("model 'rerank' cannot wrap itself: give another model as option model")
    n = as_int(options.get("n", DEFAULT_N), "n", WHERE, minimum=1)
    batch_size = as_int(
        options.get("batch_size", DEFAULT_BATCH_SIZE), "batch_size", WHERE, minimum=1
    )
    inner_options = _inner_options(options)
    try:
        factory = MODELS.get(inner_name)
    except UsageError as exc:
        raise UsageError(f"model 'rerank', option model: {exc}") from exc
    token = _BUILDING_INNER.set(True)
    try:
        inner = factory(inner_options, context)
    finally:
        _BUILDING_INNER.reset(token)
    try:
        clip = load_clip(
            model_name=str(options.get("clip_model", DEFAULT_MODEL)),
            pretrained=str(options.get("clip_pretrained", DEFAULT_PRETRAINED)),
            weights_path=options.get("clip_weights_path"),
            cache_dir=context.cache_dir,
            device=context.device,
            allow_random_weights=context.allow_random_weights,
        )
    except MissingWeightsError as exc:
        raise MissingWeightsError(
            f"model 'rerank' (CLIP scorer): {exc} (for rerank: --model-opt clip_weights_path=PATH)"
        ) from exc
    return RerankGenerator(inner, inner_name, clip, context, n=n, batch_size=batch_size)
