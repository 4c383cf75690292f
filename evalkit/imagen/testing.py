"""Tiny stages and cascades for tests and plumbing (a few thousand to a few hundred thousand parameters)."""

from __future__ import annotations

import torch

from evalkit.imagen.cascade import Cascade, Stage
from evalkit.imagen.configs import EfficientUNetConfig, StageConfig, StageSampling, UNetConfig
from evalkit.imagen.presets import TINY_TEXT
from evalkit.imagen.text_encoders import TextEncoder, TinyRandomEncoder
from evalkit.imagen.unet import build_model, randomize_


def micro_base(
    resolution: int = 16, prediction: str = "eps", schedule: str = "cosine"
) -> StageConfig:
    """Base U-Net with 8 channels, cross- and self-attention at resolution/2."""
    model = UNetConfig(
        resolution=resolution,
        channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(resolution // 2,),
        cross_attn_resolutions=(resolution // 2,),
        head_dim=8,
        text_dim=TINY_TEXT["dim"],
        groups=4,
    )
    sampling = StageSampling(steps=3, guidance=3.0)
    return StageConfig(model, dict(TINY_TEXT), schedule, prediction, None, sampling, "base")


def micro_sr(low_res: int = 16, resolution: int = 32) -> StageConfig:
    """Efficient U-Net low_res → resolution with channels (8, 16)."""
    model = EfficientUNetConfig(
        resolution=resolution,
        channels=(8, 16),
        blocks=(1, 1),
        cross_attn_resolutions=(resolution // 2,),
        head_dim=8,
        text_dim=TINY_TEXT["dim"],
        groups=4,
    )
    sampling = StageSampling(steps=2, guidance=2.0, aug_level=0.2)
    return StageConfig(
        model, dict(TINY_TEXT), "cosine", "eps", low_res, sampling, f"sr{resolution}"
    )


def micro_stage(config: StageConfig, seed: int = 0) -> Stage:
    """A stage of ``config`` with deterministic random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config.model)
    return Stage(config, randomize_(model, seed))


def micro_cascade(
    sr: bool = True, seed: int = 0, encoder: TextEncoder | None = None, **kwargs
) -> Cascade:
    """16 px base (+ 16→32 SR) cascade with random weights and the tiny text encoder."""
    stages = [micro_stage(micro_base(), seed)]
    if sr:
        stages.append(micro_stage(micro_sr(), seed + 1))
    return Cascade(
        encoder or TinyRandomEncoder(**{k: TINY_TEXT[k] for k in ("dim", "max_length", "seed")}),
        stages,
        **kwargs,
    )
