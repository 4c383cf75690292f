"""The generator contract: what every model (built-in or plugin) must do to plug into evalkit.

A plugin author calls :func:`check_generator` from their own pytest, with a small
configuration of their model (a registry name or the factory itself)::

    from evalkit.generators.base import GeneratorContext
    from evalkit.testing import check_generator

    def test_my_model_keeps_the_evalkit_generator_contract():
        check_generator(
            "my-model",                      # or my_pkg.plugin.make_generator
            {"steps": 2},
            GeneratorContext(resolution=32),
            variations=[{"steps": 3}, {"guidance": 2.0}],
        )

It raises :class:`ContractViolation` (an ``AssertionError``) listing every broken rule, and
otherwise returns a :class:`ContractReport` naming the checks that ran and those skipped.

The rules (see :mod:`evalkit.generators.base` and :mod:`evalkit.batching`):

- **format**: ``generate(requests)`` returns a ``torch.Tensor`` of dtype uint8 and shape
  ``(len(requests), 3, R, R)`` with ``R`` the context's resolution (channels first), and the
  runner's own validation accepts it unchanged.
- **determinism**: the same requests give the same pixels on a second call and from a second
  build with the same options.
- **batch independence**: a request's image is bit-identical whether it is generated alone, with
  all the others, in another order or next to a copy of itself.
- **request identity**: requests the cache cannot tell apart (equal ``request_identity``) get
  identical pixels; a request whose seed is part of its identity gets other pixels from another
  seed (its noise comes from its own seed).
- **fingerprint**: JSON-able, equal for equal options, and different (or, for options that act
  per request, the request identities different) for every option in ``variations``; options
  in ``neutral`` change neither the fingerprint nor the pixels.
- **stages**: a :class:`~evalkit.generators.base.StagedGenerator` has unique stage names, one
  resolution per stage, every stage at the context shape, and its last stage equals
  ``generate`` bit for bit.
- **invalid output refused**: the runner's validation refuses, with
  :class:`~evalkit.errors.GenerationError` (exit code 6), the generator's own output with one
  image too few or too many, float or NaN values, channels last, another resolution, or a
  NumPy array; float images with NaN are refused by ``float_to_uint8``.
- **NaN refused**: when the generator's networks (every ``torch.nn.Module`` it holds) output
  NaN, ``generate`` raises :class:`~evalkit.errors.GenerationError` instead of returning
  images (skipped for generators without networks).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from evalkit.errors import EvalkitError, GenerationError
from evalkit.generators.base import (
    GenerationRequest,
    Generator,
    GeneratorContext,
    StagedGenerator,
    check_output,
    float_to_uint8,
)
from evalkit.hashing import sha256_json
from evalkit.seeding import derive_seed
from evalkit.suites.base import Item

#: a model factory as registered: ``factory(options, context) -> Generator``
Factory = Callable[[dict[str, Any], GeneratorContext], Generator]

#: prompts used when the context has no suite (the last one is composed: AND/NOT)
DEFAULT_PROMPTS = (
    "a red cube on a table",
    "a blue sphere",
    "a green cone next to a yellow cube",
    "a red cube AND a blue sphere NOT fog:0.5",
)


class ContractViolation(AssertionError):
    """A generator broke one or more rules of the contract; the message lists each."""


@dataclass
class ContractReport:
    """What :func:`check_generator` checked: the checks passed and those skipped (with why)."""

    model: str
    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"generator contract for {self.model}: {len(self.passed)} check(s) passed"]
        lines += [f"  passed: {name}" for name in self.passed]
        lines += [f"  skipped: {name} ({why})" for name, why in self.skipped.items()]
        return "\n".join(lines)


class _Failures:
    """Collects rule violations so that one run reports all of them."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        self.messages.append(message)

    def raise_if_any(self) -> None:
        if self.messages:
            raise ContractViolation(
                f"{self.where}: {len(self.messages)} violation(s):\n- " + "\n- ".join(self.messages)
            )


# --------------------------------------------------------------------------- helpers


def resolve_factory(model: str | Factory) -> tuple[str, Factory]:
    """``(label, factory)`` for a registry name (``"toy"``, ``"images:DIR"``, a card) or a factory."""
    if isinstance(model, str):
        from evalkit.registry import MODELS

        return model, MODELS.get(model)
    return getattr(model, "__qualname__", repr(model)), model


def build(model: str | Factory, options: Mapping[str, Any], context: GeneratorContext) -> Generator:
    """A fresh generator from ``model``'s factory (``options`` copied, never mutated)."""
    _, factory = resolve_factory(model)
    return factory(dict(options), context)


def contract_requests(
    context: GeneratorContext,
    count: int = 4,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    run_seed: int = 0,
) -> list[GenerationRequest]:
    """``count`` requests with distinct derived seeds: the first items of ``context.suite`` when
    it has one (models such as ``reference`` or ``images:DIR`` serve its items), else synthetic
    items with ``prompts`` (cycled)."""
    if count < 2:
        raise ValueError("the contract needs at least 2 requests")
    if context.suite is not None:
        items = list(context.suite.items())[:count]
        if len(items) < 2:
            raise ValueError("the context's suite needs at least 2 items for the contract")
    else:
        items = [Item(f"contract-{i:02d}", prompts[i % len(prompts)]) for i in range(count)]
    return [GenerationRequest(item, 0, derive_seed(run_seed, item.id, 0)) for item in items]


def request_identity(generator: Generator, request: GenerationRequest) -> dict[str, Any]:
    """The pixel-determining fields of a request, by the runner's rule: the generator's own
    ``request_identity(request)`` when it has one, else the prompt and the seed."""
    custom = getattr(generator, "request_identity", None)
    if callable(custom):
        return custom(request)
    return {"prompt": request.prompt, "seed": request.seed}


def image_keys(generator: Generator, requests: Sequence[GenerationRequest]) -> list[str]:
    """One hash per request of everything that keys its cached image (fingerprint + identity)."""
    fingerprint = generator.fingerprint()
    return [sha256_json([fingerprint, request_identity(generator, r)]) for r in requests]


def _json_problem(value: Any) -> str | None:
    try:
        json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def _differing(a: torch.Tensor, b: torch.Tensor) -> list[int]:
    """Indices of the images (first dimension) where ``a`` and ``b`` differ."""
    return [i for i in range(len(a)) if not torch.equal(a[i], b[i])]


def _generate(
    generator: Generator, requests: Sequence[GenerationRequest], resolution: int
) -> torch.Tensor:
    """``generate(requests)`` through the runner's validation (CPU uint8 (N, 3, R, R))."""
    return check_output(
        generator.generate(list(requests)), len(requests), resolution, generator.name
    )


# --------------------------------------------------------------------------- checks


def check_output_format(
    generator: Generator, requests: Sequence[GenerationRequest], resolution: int
) -> torch.Tensor:
    """Format rule: uint8 tensor ``(len(requests), 3, resolution, resolution)``, accepted unchanged
    by the runner's validation; also ``native_resolution`` a positive int and ``settings()``
    JSON-able. Returns the images (on the CPU)."""
    failures = _Failures(f"{generator.name}: output format")
    images = generator.generate(list(requests))
    if not isinstance(images, torch.Tensor):
        failures.add(f"generate returned {type(images).__name__}, not a torch.Tensor")
        failures.raise_if_any()
    expected = (len(requests), 3, resolution, resolution)
    if images.dtype != torch.uint8:
        failures.add(f"dtype {images.dtype}, expected torch.uint8")
    if tuple(images.shape) != expected:
        failures.add(
            f"shape {tuple(images.shape)}, expected {expected} (N, 3, R, R: channels first, "
            "one image per request, at the context's resolution)"
        )
    failures.raise_if_any()
    try:
        validated = check_output(images, len(requests), resolution, generator.name)
    except GenerationError as exc:  # pragma: no cover - the checks above match check_output's
        failures.add(f"the runner's validation refused the output: {exc}")
        failures.raise_if_any()
    if not torch.equal(validated, images.cpu()):
        failures.add("the runner's validation changed the images")
    native = generator.native_resolution
    if isinstance(native, bool) or not isinstance(native, int) or native < 1:
        failures.add(f"native_resolution {native!r} is not a positive integer")
    problem = _json_problem(generator.settings())
    if problem:
        failures.add(f"settings() is not JSON-able: {problem}")
    failures.raise_if_any()
    return validated


def check_batch_independence(
    generator: Generator,
    requests: Sequence[GenerationRequest],
    resolution: int,
    images: torch.Tensor | None = None,
    batch_sizes: Sequence[int] = (1,),
) -> None:
    """Batch rule: each request's image is bit-identical whether generated with all the others
    (``images``, generated here if None), in batches of each of ``batch_sizes``, in reverse
    order, and twice in one call next to a copy of itself; a second call repeats it."""
    failures = _Failures(f"{generator.name}: batch independence")
    requests = list(requests)
    whole = _generate(generator, requests, resolution) if images is None else images
    again = _generate(generator, requests, resolution)
    if bad := _differing(whole, again):
        failures.add(f"a second identical call changed image(s) {bad} (hidden state or RNG?)")
    for size in batch_sizes:
        parts = [
            _generate(generator, requests[i : i + size], resolution)
            for i in range(0, len(requests), size)
        ]
        if bad := _differing(whole, torch.cat(parts)):
            failures.add(
                f"batches of {size} give other pixels than one batch of {len(requests)} for "
                f"request(s) {bad}"
            )
    reverse = _generate(generator, requests[::-1], resolution).flip(0)
    if bad := _differing(whole, reverse):
        failures.add(f"reversing the order of the requests changed image(s) {bad}")
    twice = _generate(generator, [requests[0], requests[0], requests[1]], resolution)
    if not torch.equal(twice[0], twice[1]):
        failures.add("a request repeated in one call gave two different images (shared RNG?)")
    if not (torch.equal(twice[0], whole[0]) and torch.equal(twice[2], whole[1])):
        failures.add("a repeated request in the call changed the images of the call")
    failures.raise_if_any()


def _variants(request: GenerationRequest) -> Iterator[tuple[str, GenerationRequest]]:
    item = request.item
    yield "another seed", GenerationRequest(item, request.sample_index, request.seed + 1)
    relabelled = Item(f"{item.id}-relabelled", item.prompt, item.category, item.spec)
    yield (
        "another item id and sample index (same prompt and seed)",
        GenerationRequest(relabelled, request.sample_index + 1, request.seed),
    )


def check_request_identity(
    generator: Generator,
    requests: Sequence[GenerationRequest],
    resolution: int,
    images: torch.Tensor | None = None,
    seed_sensitive: bool = True,
) -> None:
    """Identity rule: ``request_identity`` is JSON-able; a variant of a request (other seed, or
    other item id and sample index) with an equal identity gets identical pixels (else the cache
    would serve one for the other); with ``seed_sensitive``, another seed that changes the
    identity changes the pixels. Variants the generator cannot serve (it raises an
    :class:`~evalkit.errors.EvalkitError`, e.g. ``images:DIR`` for an unknown item) are skipped."""
    failures = _Failures(f"{generator.name}: request identity")
    whole = _generate(generator, requests, resolution) if images is None else images
    for k, request in enumerate(requests[:2]):
        identity = request_identity(generator, request)
        problem = _json_problem(identity)
        if problem:
            failures.add(f"request_identity is not JSON-able: {problem}")
            continue
        for label, variant in _variants(request):
            try:
                variant_identity = request_identity(generator, variant)
                pixels = _generate(generator, [variant], resolution)[0]
            except EvalkitError:
                continue  # the generator serves only known items (reference, images:DIR)
            same = torch.equal(pixels, whole[k])
            if variant_identity == identity and not same:
                failures.add(
                    f"request {k} with {label} has the same request identity but other pixels: "
                    "the image cache would serve the wrong image"
                )
            if seed_sensitive and label == "another seed" and variant_identity != identity and same:
                failures.add(
                    f"request {k} with another seed (part of its identity) gave the same pixels: "
                    "is the noise drawn from the request's own seed?"
                )
    failures.raise_if_any()


def check_stages(
    generator: Generator,
    requests: Sequence[GenerationRequest],
    resolution: int,
    images: torch.Tensor | None = None,
) -> bool:
    """Stages rule, for a :class:`StagedGenerator` (returns False for other generators): unique
    names, one resolution each, uint8 images at the context shape per stage, non-negative
    latencies, and the last stage equal to ``generate`` bit for bit."""
    if not isinstance(generator, StagedGenerator):
        return False
    failures = _Failures(f"{generator.name}: per-stage outputs")
    whole = _generate(generator, requests, resolution) if images is None else images
    names, resolutions = list(generator.stage_names()), list(generator.stage_resolutions())
    if not names or len(set(names)) != len(names) or len(resolutions) != len(names):
        failures.add(f"stage names {names} must be unique and match resolutions {resolutions}")
    stages = generator.generate_stages(list(requests))
    if [s.name for s in stages] != names:
        failures.add(f"generate_stages returned stages {[s.name for s in stages]}, not {names}")
    for stage in stages:
        try:
            check_output(stage.images, len(requests), resolution, f"stage {stage.name}")
        except GenerationError as exc:
            failures.add(str(exc))
        if not (isinstance(stage.latency_s, (int, float)) and stage.latency_s >= 0):
            failures.add(f"stage {stage.name} latency {stage.latency_s!r} is not a number ≥ 0")
    if stages and not torch.equal(stages[-1].images.cpu(), whole):
        failures.add("the last stage's images differ from generate()'s")
    failures.raise_if_any()
    return True


def check_fingerprint(
    model: str | Factory,
    options: Mapping[str, Any],
    context: GeneratorContext,
    requests: Sequence[GenerationRequest] | None = None,
    variations: Sequence[Mapping[str, Any]] = (),
    neutral: Sequence[Mapping[str, Any]] = (),
    base: Generator | None = None,
) -> None:
    """Fingerprint rule: the fingerprint is JSON-able and the same for a second build with the
    same options; each entry of ``variations`` (option overrides that change the pixels) changes
    the fingerprint, or at least the identity of every request whose pixels it changes, and no
    two variations share their keys; each entry of ``neutral`` (overrides that must not change the
    pixels, e.g. a delay or a chunk size) leaves fingerprint and pixels unchanged."""
    label, _ = resolve_factory(model)
    failures = _Failures(f"{label}: fingerprint")
    requests = list(requests) if requests is not None else contract_requests(context)
    base = base if base is not None else build(model, options, context)
    fingerprint = base.fingerprint()
    problem = _json_problem(fingerprint)
    if problem:
        failures.add(f"fingerprint() is not JSON-able: {problem}")
        failures.raise_if_any()
    if build(model, options, context).fingerprint() != fingerprint:
        failures.add("two builds with the same options have different fingerprints")
    base_keys = image_keys(base, requests)
    base_images = base.generate(list(requests))
    seen: dict[tuple[str, ...], str] = {tuple(base_keys): "the base options"}
    for overrides in variations:
        what = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        other = build(model, {**options, **overrides}, context)
        keys = image_keys(other, requests)
        changed = other.fingerprint() != fingerprint
        if not changed and keys == base_keys:
            failures.add(f"{what}: fingerprint and request identities unchanged")
        elif not changed:
            pixels = other.generate(list(requests))
            for i in _differing(base_images, pixels):
                if keys[i] == base_keys[i]:
                    failures.add(f"{what}: request {i} has other pixels but the same key")
        if tuple(keys) in seen and seen[tuple(keys)] != "the base options":
            failures.add(f"{what}: same keys as {seen[tuple(keys)]}")
        seen.setdefault(tuple(keys), what)
    for overrides in neutral:
        what = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        other = build(model, {**options, **overrides}, context)
        if other.fingerprint() != fingerprint:
            failures.add(f"{what} (declared pixel-neutral) changed the fingerprint")
        elif image_keys(other, requests) != base_keys:
            failures.add(f"{what} (declared pixel-neutral) changed request identities")
        if bad := _differing(base_images, other.generate(list(requests))):
            failures.add(f"{what} (declared pixel-neutral) changed the pixels of request(s) {bad}")
    failures.raise_if_any()


def _expect_refused(failures: _Failures, what: str, call: Callable[[], Any]) -> None:
    try:
        call()
    except GenerationError as exc:
        if exc.exit_code != 6:
            failures.add(f"{what}: refused with exit code {exc.exit_code}, not 6")
    except Exception as exc:  # noqa: BLE001 - any other type is the violation reported
        failures.add(f"{what}: raised {type(exc).__name__} ({exc}), not GenerationError")
    else:
        failures.add(f"{what}: accepted")


def check_invalid_output_refused(images: torch.Tensor, resolution: int, model: str) -> None:
    """Harness rule, on the generator's own valid ``images``: the runner's validation
    (:func:`~evalkit.generators.base.check_output`) accepts them and refuses with
    :class:`GenerationError` (exit 6) one image too few or too many for the requests, float
    values (NaN included), channels last, another resolution and a NumPy array;
    :func:`~evalkit.generators.base.float_to_uint8` refuses NaN and infinity."""
    failures = _Failures(f"{model}: invalid output refused")
    n = len(images)
    if n < 2:
        raise ValueError("check_invalid_output_refused needs at least 2 images")
    check_output(images, n, resolution, model)
    corrupt: dict[str, Callable[[], Any]] = {
        "one image fewer than requests": lambda: check_output(images[:-1], n, resolution, model),
        "one image more than requests": lambda: check_output(
            torch.cat([images, images[:1]]), n, resolution, model
        ),
        "float32 images": lambda: check_output(images.float(), n, resolution, model),
        "channels last (N, R, R, 3)": lambda: check_output(
            images.permute(0, 2, 3, 1).contiguous(), n, resolution, model
        ),
        "another resolution": lambda: check_output(
            images[..., :-1, :-1].contiguous(), n, resolution, model
        ),
        "a NumPy array": lambda: check_output(images.numpy(), n, resolution, model),
    }
    floats = images.float() / 127.5 - 1.0
    for bad_value in (math.nan, math.inf):
        poisoned = floats.clone()
        poisoned[n // 2, 0, 0, 0] = bad_value
        # partial binds this iteration's tensor (a bare lambda would see the last one)
        corrupt[f"float images with {bad_value} (dtype check)"] = functools.partial(
            check_output, poisoned, n, resolution, model
        )
        corrupt[f"float images with {bad_value} through float_to_uint8"] = functools.partial(
            float_to_uint8, poisoned
        )
    for what, call in corrupt.items():
        _expect_refused(failures, what, call)
    failures.raise_if_any()


def _modules(obj: Any, depth: int = 6, seen: set[int] | None = None) -> list[torch.nn.Module]:
    """Every ``torch.nn.Module`` reachable from ``obj``'s attributes (and their modules)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth < 0:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.nn.Module):
        return list(obj.modules())
    if isinstance(obj, (str, bytes, int, float, bool, type(None), torch.Tensor, type)):
        return []
    if isinstance(obj, Mapping):
        children: list[Any] = list(obj.values())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    elif hasattr(obj, "__dict__"):
        children = list(vars(obj).values())
    else:
        return []
    found: list[torch.nn.Module] = []
    for child in children:
        found += _modules(child, depth - 1, seen)
    return found


def _nan_like(out: Any) -> Any:
    """``out`` with every floating-point tensor replaced by NaN (containers rebuilt)."""
    if isinstance(out, torch.Tensor):
        return torch.full_like(out, math.nan) if out.is_floating_point() else out
    if isinstance(out, Mapping):
        values = {k: _nan_like(v) for k, v in out.items()}
        try:
            return type(out)(**values)
        except TypeError:
            return dict(values)
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return type(out)(*(_nan_like(v) for v in out))
    if isinstance(out, (tuple, list)):
        return type(out)(_nan_like(v) for v in out)
    return out


def check_nan_refused(
    model: str | Factory,
    options: Mapping[str, Any],
    context: GeneratorContext,
    requests: Sequence[GenerationRequest],
) -> bool:
    """NaN rule: with every ``torch.nn.Module`` of a fresh build outputting NaN, ``generate``
    raises :class:`GenerationError` (exit 6) and returns no images. Returns False (nothing
    checked) when the generator holds no module. The hooks are removed afterwards."""
    label, _ = resolve_factory(model)
    failures = _Failures(f"{label}: NaN refused")
    generator = build(model, options, context)
    modules = list({id(m): m for m in _modules(generator)}.values())
    if not modules:
        return False
    handles = [m.register_forward_hook(lambda _m, _i, out: _nan_like(out)) for m in modules]
    try:
        _expect_refused(
            failures,
            f"generate with NaN from its {len(modules)} network module(s)",
            lambda: generator.generate(list(requests)),
        )
    finally:
        for handle in handles:
            handle.remove()
    failures.raise_if_any()
    return True


# --------------------------------------------------------------------------- all of it


def check_generator(
    model: str | Factory,
    options: Mapping[str, Any],
    context: GeneratorContext,
    *,
    requests: Sequence[GenerationRequest] | None = None,
    variations: Sequence[Mapping[str, Any]] = (),
    neutral: Sequence[Mapping[str, Any]] = (),
    batch_sizes: Sequence[int] = (1,),
    seed_sensitive: bool = True,
    nan_check: bool = True,
) -> ContractReport:
    """Run every contract check on ``model`` (a registry name or a factory) built with
    ``options`` in ``context``; raise :class:`ContractViolation` listing each failed check.

    ``requests`` default to :func:`contract_requests` (4 requests, one with a composed
    AND/NOT prompt when the context has no suite). ``variations``: option overrides that
    change the pixels (each must change the cache keys); ``neutral``: overrides that must not.
    ``batch_sizes``: the split sizes compared with one batch of all requests.
    ``seed_sensitive=False`` for models whose pixels do not depend on the seed (they must then
    keep the seed out of their ``request_identity``). ``nan_check=False`` skips the NaN rule
    (e.g. for a model whose networks run outside PyTorch)."""
    label, _ = resolve_factory(model)
    report = ContractReport(label)
    requests = list(requests) if requests is not None else contract_requests(context)
    generator = build(model, options, context)
    images = check_output_format(generator, requests, context.resolution)
    report.passed.append("output format")
    violations: list[str] = []

    def run(name: str, call: Callable[[], Any]) -> Any:
        try:
            result = call()
        except ContractViolation as exc:
            violations.append(str(exc))
            return None
        if result is False:
            return result
        report.passed.append(name)
        return result

    run(
        "batch independence",
        lambda: check_batch_independence(
            generator, requests, context.resolution, images, batch_sizes
        ),
    )
    run(
        "request identity",
        lambda: check_request_identity(
            generator, requests, context.resolution, images, seed_sensitive
        ),
    )
    if (
        run(
            "per-stage outputs",
            lambda: check_stages(generator, requests, context.resolution, images),
        )
        is False
    ):
        report.skipped["per-stage outputs"] = "not a StagedGenerator"
    run(
        "fingerprint",
        lambda: check_fingerprint(
            model, options, context, requests, variations, neutral, base=generator
        ),
    )
    run(
        "invalid output refused",
        lambda: check_invalid_output_refused(images, context.resolution, label),
    )
    if not nan_check:
        report.skipped["NaN refused"] = "nan_check=False"
    elif run("NaN refused", lambda: check_nan_refused(model, options, context, requests)) is False:
        report.skipped["NaN refused"] = "the generator holds no torch.nn.Module"
    if violations:
        raise ContractViolation("\n".join(violations))
    return report
