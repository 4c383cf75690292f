"""The FID Inception network: uint8 images in, float64 pool3 features (and logits) out.

The network is torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF Inception-v3 2015-12-05
graph, bugs included). Two resize modes:

- ``tf1`` (default, torch-fidelity exact): uint8 images are resized from their native size to
  299×299 with TF1 bilinear interpolation (no antialiasing), by
  :func:`~evalkit.metrics.tf1_resize.tf1_bilinear_resize`, which equals torch-fidelity's
  in-network resize bit for bit and runs faster.
- ``clean`` (clean-fid's recipe): each channel is resized to 299×299 on the CPU with PIL's
  antialiased bicubic filter on float32 values, clipped to [0, 255] and fed unquantised.

Resize and network run on fixed-shape micro-batches of ``batch_size`` images (default
:data:`BATCH_SIZE`, read when an extractor is built; the last one padded; :mod:`evalkit.batching`), with one intra-op thread each
on a CPU, so an image's features depend on neither the batch it came in nor the thread count.
The metrics feed it through a :class:`~evalkit.batching.RowBuffer` (:func:`feature_buffer`), so
their float64 statistics see the same micro-batches in the same order for any batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from evalkit.batching import RowBuffer, check_micro_batch, run_in_micro_batches, worker_count
from evalkit.errors import InputError, UsageError
from evalkit.features.base import FeatureExtractor, device_identity
from evalkit.metrics.inception_net import (
    EXTRACTOR_NAME,
    LOGITS,
    POOL3,
    InceptionNetwork,
    inception_network,
)
from evalkit.metrics.tf1_resize import tf1_bilinear_resize
from evalkit.metrics.weights import InceptionWeights, load_state_dict
from evalkit.options import as_choice, check_known

RESIZE_MODES = ("tf1", "clean")
#: images per network call (fixes the low bits of the features; recorded in the manifest)
BATCH_SIZE = 32
INPUT_SIZE = 299
MIN_IMAGE_SIZE = 16
EXTRACTOR_DESCRIPTION = (
    "torch-fidelity FeatureExtractorInceptionV3 (TF Inception-v3 2015-12-05, pool3 2048-d)"
)


def build_inception_network(
    weights: InceptionWeights | None, features: Sequence[str]
) -> InceptionNetwork:
    """torch-fidelity's Inception with ``weights`` loaded (seeded random init when None/random)."""
    if weights is None or weights.path is None:
        return inception_network(None, features)
    return inception_network(load_state_dict(weights.path), features, what=str(weights.path))


def as_image_batch(images: torch.Tensor | np.ndarray, what: str = "images") -> torch.Tensor:
    """Check a batch is uint8 (B, 3, H, W) with H, W ≥ 16 and return it as a CPU tensor."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not torch.is_tensor(images):
        raise InputError(f"{what}: expected a uint8 tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise InputError(f"{what}: dtype {images.dtype}, expected torch.uint8 values in [0, 255]")
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"{what}: shape {tuple(images.shape)}, expected (B, 3, H, W)")
    if min(images.shape[2], images.shape[3]) < MIN_IMAGE_SIZE:
        raise InputError(
            f"{what}: {images.shape[2]}x{images.shape[3]} pixels is below the {MIN_IMAGE_SIZE}-pixel "
            "minimum for Inception features"
        )
    return images.cpu()


def clean_resize(images: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """clean-fid's resize: per-channel PIL bicubic on float32, clipped to [0, 255]; float32 out."""
    arr = images.numpy()
    out = np.empty((arr.shape[0], 3, size, size), dtype=np.float32)
    for b in range(arr.shape[0]):
        for c in range(3):
            channel = Image.fromarray(arr[b, c].astype(np.float32))
            resized = channel.resize((size, size), resample=Image.Resampling.BICUBIC)
            out[b, c] = np.asarray(resized, dtype=np.float32)
    return torch.from_numpy(np.clip(out, 0.0, 255.0))


class InceptionExtractor(FeatureExtractor):
    """uint8 (B, 3, H, W) → pool3 (2048-d) and, when the weights have the classifier, logits.

    Both layers come from one pass; a metric takes the one it needs (FID and KID pool3,
    Inception Score the logits), so one extractor serves all three.
    """

    name = EXTRACTOR_NAME

    def __init__(
        self,
        weights: InceptionWeights,
        *,
        layers: Sequence[str] | None = None,
        device: str = "cpu",
        resize: str = "tf1",
        batch_size: int | None = None,
    ) -> None:
        if resize not in RESIZE_MODES:
            raise UsageError(
                f"unknown resize mode {resize!r}; choose one of {', '.join(RESIZE_MODES)}"
            )
        self.weights = weights
        available = (POOL3, LOGITS) if weights.has_logits else (POOL3,)
        self._layers = tuple(available if layers is None else layers)
        if not set(self._layers) <= {POOL3, LOGITS}:
            raise UsageError(f"Inception layers are {POOL3} and {LOGITS}, not {self._layers}")
        self.device = torch.device(device)
        self.resize = resize
        self.batch_size = check_micro_batch(
            BATCH_SIZE if batch_size is None else batch_size, "Inception batch_size"
        )
        # On CPUs oneDNN runs the convolutions ~1.4x faster on NHWC tensors; features differ
        # from the NCHW run by float32 rounding only (~1e-6 relative, tests/test_fid.py).
        self.memory_format = (
            torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        )
        self._net: InceptionNetwork | None = None

    @property
    def net(self) -> InceptionNetwork:
        """The network, built on first use (a metric's extractor may be replaced by a shared one)."""
        if self._net is None:
            self._net = build_inception_network(self.weights, self._layers).to(
                self.device, memory_format=self.memory_format
            )
        return self._net

    @property
    def layers(self) -> dict[str, int]:
        return {name: {POOL3: 2048, LOGITS: 1008}[name] for name in self._layers}

    @property
    def calibrated(self) -> bool:
        return self.weights.calibrated

    def fingerprint(self) -> dict[str, Any]:
        return {
            "extractor": EXTRACTOR_NAME,
            "weights_sha256": self.weights.sha256,
            "layers": list(self._layers),
            "resize": self.resize,
            "batch_size": self.batch_size,
            "memory_format": "channels_last"
            if self.memory_format == torch.channels_last
            else "nchw",
            **device_identity(self.device),
        }

    def _network(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Resize and network on one micro-batch of uint8 CPU images; float32 CPU outputs."""
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            if self.resize == "tf1":
                resized = tf1_bilinear_resize(batch.to(self.device, torch.float32), INPUT_SIZE)
            else:
                resized = clean_resize(batch).to(self.device)
            outputs = self.net.forward_float299(
                resized.contiguous(memory_format=self.memory_format)
            )
        return tuple(out.to("cpu") for out in outputs)

    def extract(self, images: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """float32 features of a batch (any size) on the CPU, keyed by layer name."""
        batch = as_image_batch(images)
        outputs = run_in_micro_batches(
            self._network, batch, size=self.batch_size, workers=worker_count(self.device)
        )
        return {
            name: out.to(torch.float32).numpy()
            for name, out in zip(self._layers, outputs, strict=True)
        }

    def __call__(self, images: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`extract` as float64 (the statistics' precision), for direct use."""
        return {name: out.astype(np.float64) for name, out in self.extract(images).items()}

    def describe(self) -> dict[str, Any]:
        """Manifest entries for the extractor and its weights."""
        resize = {
            "tf1": "native size into the network, TF1 bilinear to 299 (torch-fidelity exact)",
            "clean": "PIL bicubic (antialiased, float32 per channel) to 299 on CPU (clean-fid recipe)",
        }[self.resize]
        return {
            "extractor": EXTRACTOR_DESCRIPTION,
            "extractor_name": EXTRACTOR_NAME,
            "resize": self.resize,
            "resize_detail": resize,
            "input_scaling": "(x - 128) / 128",
            "dtype": "float32 network, float64 statistics",
            "memory_format": "channels_last"
            if self.memory_format == torch.channels_last
            else "nchw",
            # images per network call, the last padded: fixes the low bits of the features
            "batch_size": self.batch_size,
            "device": str(self.device),
            **self.weights.manifest(),
        }


def feature_stream(consume: Callable[[np.ndarray], None]) -> RowBuffer:
    """A buffer of feature rows handing ``consume`` float64 rows in chunks of :data:`BATCH_SIZE`
    at fixed positions of the stream, so float64 running sums add the same partial sums in the
    same order however the images were batched."""

    def hand_on(rows: torch.Tensor, _: list[Any]) -> None:
        features = rows.numpy().astype(np.float64)
        for start in range(0, len(features), BATCH_SIZE):
            consume(features[start : start + BATCH_SIZE])

    return RowBuffer(BATCH_SIZE, hand_on)


def inception_features(
    context: Any, extractor: InceptionExtractor, images: torch.Tensor, layer: str, what: str
) -> torch.Tensor:
    """One layer of the shared provider's Inception features of a checked uint8 batch."""
    batch = as_image_batch(images, what)
    return torch.from_numpy(context.features.extract(extractor, batch)[layer])


def check_options(options: dict[str, Any], defaults: dict[str, Any], metric: str) -> dict[str, Any]:
    """``defaults`` updated with ``options``; an unknown option or resize mode raises
    :class:`UsageError` (the metric's class checks its other options)."""
    where = f"metric {metric!r}"
    check_known(options, defaults, where)
    merged = {**defaults, **options}
    as_choice(merged.get("resize"), RESIZE_MODES, "resize", where)
    return merged


def library_versions() -> dict[str, str]:
    """Versions of the libraries a feature-based result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__, "numpy": np.__version__}
    for dist in ("torch-fidelity", "evalkit"):
        try:
            out[dist.replace("-", "_")] = version(dist)
        except PackageNotFoundError:
            out[dist.replace("-", "_")] = "unknown"
    return out
