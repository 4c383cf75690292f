"""Train one cascade stage: AdamW + linear warmup, gradient clipping, EMA, 10% text dropout,
noise-conditioning augmentation for super-resolution stages, atomic checkpoints and resume,
data parallelism under torchrun.

Randomness is re-derived every step from (seed, rank, step), so a resumed run continues
exactly as an uninterrupted one would (map-style data is reshuffled per epoch from the seed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evalkit.atomic import atomic_write_json, atomic_write_text
from evalkit.errors import EvalkitError, InputError, UsageError
from evalkit.imagen.cascade import augment_condition, upsample_condition
from evalkit.imagen.checkpoint import check_state_dict, save_stage
from evalkit.imagen.configs import StageConfig, _from_dict, _to_dict
from evalkit.imagen.data import downsample, to_model_image
from evalkit.imagen.diffusion import diffusion_loss
from evalkit.imagen.schedules import get_schedule
from evalkit.imagen.text_encoders import TextEmbedding, TextEncoder, build_text_encoder
from evalkit.imagen.unet import build_model

LR_SCHEDULES = ("constant", "cosine")


class TrainingError(EvalkitError):
    """Training diverged or cannot continue."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one stage's training run (Imagen: lr 1e-4, 10k warmup, Adam for SR)."""

    stage: StageConfig
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-4
    warmup_steps: int = 100
    lr_schedule: str = "constant"
    min_lr_ratio: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    text_dropout: float = 0.1
    aug_max: float = 0.5
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 50
    seed: int = 0
    bf16: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise UsageError(
                f"steps and batch_size must be positive (got {self.steps}, {self.batch_size})"
            )
        if not 0.0 <= self.text_dropout < 1.0:
            raise UsageError(f"text_dropout must be in [0, 1), got {self.text_dropout}")
        if not 0.0 <= self.aug_max <= 1.0:
            raise UsageError(f"aug_max must be in [0, 1], got {self.aug_max}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UsageError(
                f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise UsageError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def lr_factor(self, step: int) -> float:
        """Learning rate at ``step`` as a share of ``lr``: linear warm-up, then constant or cosine.

        The cosine decays from 1 after warm-up to ``min_lr_ratio`` at ``steps``; a resumed run
        with a larger ``steps`` continues on the longer curve.
        """
        warm = min(1.0, (step + 1) / max(1, self.warmup_steps))
        if self.lr_schedule == "constant" or step < self.warmup_steps:
            return warm
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )

    def to_dict(self) -> dict[str, Any]:
        d = _to_dict(dataclasses.replace(self, stage=None))  # type: ignore[arg-type]
        d["stage"] = self.stage.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        stage = StageConfig.from_dict(data.pop("stage"))
        return dataclasses.replace(
            _from_dict(cls, {**data, "stage": None}, "train config"), stage=stage
        )


@dataclass
class TrainResult:
    """Where the run ended: step, per-step losses of this call, the exported EMA stage checkpoint."""

    step: int
    losses: list[float] = field(default_factory=list)
    checkpoint: Path | None = None
    resumed_from: int | None = None


class EMA:
    """θ̄ ← d·θ̄ + (1−d)·θ with d = min(decay, (1+n)/(10+n)) (float32 shadow weights)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)


def _step_seed(seed: int, rank: int, step: int) -> int:
    digest = hashlib.sha256(f"evalkit-imagen-train\x1f{seed}\x1f{rank}\x1f{step}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _dist() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment, initialising the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _examples(
    data: Iterable[Any], cfg: TrainConfig, rank: int, world: int, start: int
) -> Iterator[tuple[Any, str]]:
    """This rank's examples from batch index ``start`` on: shuffled epochs for map-style data, else the stream."""
    per_step = cfg.batch_size * world
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        n = len(data)  # type: ignore[arg-type]
        if n < per_step:
            raise InputError(
                f"training data has {n} examples, fewer than one global batch ({per_step})"
            )
        steps_per_epoch = n // per_step
        epoch, offset = divmod(start, steps_per_epoch)
        while True:
            order = torch.randperm(
                n, generator=torch.Generator().manual_seed(_step_seed(cfg.seed, -1, epoch))
            )
            order = order[: steps_per_epoch * per_step].view(
                steps_per_epoch, world, cfg.batch_size
            )[:, rank]
            for idx in order[offset:].flatten().tolist():
                yield data[idx]
            epoch, offset = epoch + 1, 0
    skip = start * per_step
    while True:
        seen = 0
        for i, example in enumerate(data):
            seen += 1
            if i < skip or i % world != rank:
                continue
            yield example
        if seen == 0:
            raise InputError("training data yielded no examples")
        if iter(data) is data:  # a one-shot iterator: it has run dry
            return
        skip = max(0, skip - seen)


def _batch(
    it: Iterator[tuple[Any, str]], cfg: TrainConfig
) -> tuple[torch.Tensor, list[str]] | None:
    images, captions = [], []
    for image, caption in it:
        images.append(to_model_image(image, cfg.stage.resolution))
        captions.append(str(caption))
        if len(images) == cfg.batch_size:
            return torch.stack(images), captions
    return None


def _text(encoder: TextEncoder, captions: list[str], drop: torch.Tensor) -> TextEmbedding:
    """Embeddings with captions zeroed (∅) where ``drop`` or empty: classifier-free guidance training."""
    keep = [i for i, c in enumerate(captions) if c.strip() and not drop[i]]
    out = encoder.null(len(captions))
    if keep:
        enc = encoder.encode([captions[i] for i in keep])
        for full, part in zip(out, enc, strict=True):
            full[keep] = part
    return out


def loss_on_batch(
    model: nn.Module,
    stage: StageConfig,
    images: torch.Tensor,
    text: TextEmbedding,
    generator: torch.Generator,
    aug_max: float = 0.5,
) -> torch.Tensor:
    """Diffusion loss of one batch with t ~ U(0,1), ε ~ N(0, I) (and t_aug ~ U(0, aug_max) for SR) from ``generator``."""
    device = next(model.parameters()).device
    b = len(images)
    t = torch.rand(b, generator=generator).to(device)
    eps = torch.randn(images.shape, generator=generator).to(device)
    x = images.to(device)
    cond: dict[str, torch.Tensor | None] = {
        "tokens": text.tokens.to(device),
        "mask": text.mask.to(device),
        "pooled": text.pooled.to(device),
    }
    if stage.low_res is not None:  # stage.is_sr
        schedule = get_schedule(stage.schedule)
        aug_t = (torch.rand(b, generator=generator) * aug_max).to(device)
        aug_eps = torch.randn(images.shape, generator=generator).to(device)
        low = upsample_condition(downsample(x, stage.low_res), stage.resolution)
        cond["lowres"] = augment_condition(low, aug_t, aug_eps, schedule)
        cond["aug_t"] = aug_t
    return diffusion_loss(model, x, t, eps, get_schedule(stage.schedule), stage.prediction, **cond)


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder named by ``out_dir/checkpoints/latest``, if any."""
    pointer = Path(out_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text(encoding="utf-8").strip()
    return folder if (folder / "state.pt").is_file() else None


def _save_checkpoint(
    out_dir: Path, cfg: TrainConfig, step: int, model: nn.Module, ema: EMA, opt, sched
) -> Path:
    """Write checkpoints/step-N/ (model, ema, state) into a temp folder, rename it, update ``latest``."""
    root = out_dir / "checkpoints"
    name = f"step-{step:08d}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_stage(tmp / "model.safetensors", cfg.stage, model)
    save_stage(tmp / "ema.safetensors", cfg.stage, ema.shadow)
    state = {
        "step": step,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    torch.save(state, tmp / "state.pt")
    atomic_write_json(tmp / "train_config.json", cfg.to_dict())
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", name + "\n")
    old = sorted(p for p in root.glob("step-*") if p.is_dir() and p != final)
    for p in old[: max(0, len(old) - (cfg.keep_checkpoints - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def _resume(folder: Path, cfg: TrainConfig, model: nn.Module, ema: EMA, opt, sched) -> int:
    from safetensors.torch import load_file

    for name, target in (
        ("model.safetensors", model.state_dict()),
        ("ema.safetensors", ema.shadow),
    ):
        state = load_file(str(folder / name))
        check_state_dict(target, state, f"training checkpoint {folder / name}")
        if name == "model.safetensors":
            model.load_state_dict(state, strict=True)
        else:
            ema.shadow = {k: v.float() for k, v in state.items()}
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return int(state["step"])


def train_stage(
    config: TrainConfig,
    data: Iterable[Any],
    out_dir: str | os.PathLike,
    *,
    text_encoder: TextEncoder | None = None,
    device: str | torch.device | None = None,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``config.stage`` on (image, caption) pairs; checkpoints under ``out_dir``; returns the run's end state.

    ``stop_after`` ends this call after that many steps (the run can be resumed later).
    The EMA weights are exported to ``out_dir/<stage name>.safetensors`` at the end.
    """
    rank, world, local_rank = _dist()
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    out_dir = Path(out_dir)
    stage = config.stage
    encoder = text_encoder or build_text_encoder(stage.text_encoder)
    if any(encoder.spec.get(k) != v for k, v in stage.text_encoder.items()):
        raise UsageError(
            f"text encoder {encoder.spec} differs from the stage's {stage.text_encoder}"
        )
    stage = stage.replace(text_encoder=dict(encoder.spec))  # checkpoints record the full spec
    config = dataclasses.replace(config, stage=stage)
    torch.manual_seed(config.seed)
    model = build_model(stage.model).to(device).train()
    ema = EMA(model, config.ema_decay)
    opt = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: config.lr_factor(s))
    step, resumed = 0, None
    folder = latest_checkpoint(out_dir) if resume else None
    if folder is not None:
        step = resumed = _resume(folder, config, model, ema, opt, sched)
        if rank == 0 and progress:
            print(f"imagen train: resumed from {folder} at step {step}", file=sys.stderr)
    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    examples = _examples(data, config, rank, world, step)
    use_bf16 = device.type == "cuda" and config.bf16
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    )
    result = TrainResult(step=step, resumed_from=resumed)
    end = config.steps if stop_after is None else min(config.steps, step + stop_after)
    started = time.perf_counter()
    while step < end:
        batch = _batch(examples, config)
        if batch is None:
            print(f"imagen train: data ran out at step {step}", file=sys.stderr)
            break
        images, captions = batch
        g = torch.Generator().manual_seed(_step_seed(config.seed, rank, step))
        torch.manual_seed(_step_seed(config.seed, rank, step))  # dropout layers
        drop = torch.rand(len(captions), generator=g) < config.text_dropout
        text = _text(encoder, captions, drop)
        with autocast:
            loss = loss_on_batch(net, stage, images, text, g, config.aug_max)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"training loss became {loss.item()} at step {step}; lower the learning rate or check the data"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        step += 1
        ema.update(model, step)
        result.losses.append(float(loss.detach()))
        if rank == 0 and progress and (step % config.log_every == 0 or step == end):
            rate = len(result.losses) / (time.perf_counter() - started)
            print(
                f"imagen train: step {step}/{config.steps} loss {result.losses[-1]:.4f} lr {sched.get_last_lr()[0]:.2e} ({rate:.2f} it/s)",
                file=sys.stderr,
            )
        if step % config.checkpoint_every == 0 or step == end:
            if rank == 0:
                _save_checkpoint(out_dir, config, step, model, ema, opt, sched)
            _barrier(world)
    result.step = step
    if rank == 0:
        result.checkpoint = save_stage(out_dir / f"{stage.name}.safetensors", stage, ema.shadow)
    _barrier(world)
    return result


def evaluate_loss(
    model: nn.Module,
    stage: StageConfig,
    images: torch.Tensor,
    text: TextEmbedding,
    seed: int = 0,
    aug_max: float = 0.5,
) -> float:
    """Loss on a fixed batch with fixed (t, ε) from ``seed``: comparable before and after training."""
    was = model.training
    model.eval()
    with torch.no_grad():
        loss = loss_on_batch(
            model, stage, images, text, torch.Generator().manual_seed(seed), aug_max
        )
    model.train(was)
    return float(loss)


__all__ = [
    "TrainConfig",
    "TrainResult",
    "train_stage",
    "evaluate_loss",
    "latest_checkpoint",
    "loss_on_batch",
]
