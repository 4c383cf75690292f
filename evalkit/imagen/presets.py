"""Named stage configs: tiny ones for tests and plumbing, and the paper's (never built in tests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from evalkit.errors import UsageError
from evalkit.imagen.configs import EfficientUNetConfig, StageConfig, StageSampling, UNetConfig

TINY_TEXT: dict[str, Any] = {"kind": "tiny", "dim": 32, "max_length": 16, "seed": 0, "vocab": 1024}
T5_XXL: dict[str, Any] = {"kind": "t5", "name": "google/t5-v1_1-xxl", "max_length": 128}
MINILM_TEXT: dict[str, Any] = {
    "kind": "minilm",
    "name": "sentence-transformers/all-MiniLM-L6-v2",
    "max_length": 64,
}


def tiny_base(
    resolution: int = 32, text_encoder: dict[str, Any] | None = None, text_dim: int = 32
) -> StageConfig:
    """≈200k-parameter base U-Net (channels 16, mult 1-2-2, cross-attention at res/4)."""
    model = UNetConfig(
        resolution=resolution,
        channels=16,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attn_resolutions=(resolution // 4,),
        cross_attn_resolutions=(resolution // 2, resolution // 4),
        head_dim=16,
        text_dim=text_dim,
        groups=8,
    )
    sampling = StageSampling(steps=4, guidance=3.0)
    return StageConfig(
        model, text_encoder or dict(TINY_TEXT), "cosine", "eps", None, sampling, "base"
    )


def tiny_sr(
    low_res: int = 32,
    resolution: int = 64,
    text_encoder: dict[str, Any] | None = None,
    text_dim: int = 32,
) -> StageConfig:
    """≈200k-parameter Efficient U-Net super-resolution stage low_res → resolution."""
    model = EfficientUNetConfig(
        resolution=resolution,
        channels=(16, 32, 48),
        blocks=(1, 1, 2),
        cross_attn_resolutions=(resolution // 4,),
        head_dim=16,
        text_dim=text_dim,
        groups=8,
    )
    sampling = StageSampling(steps=4, guidance=2.0, aug_level=0.2)
    return StageConfig(
        model,
        text_encoder or dict(TINY_TEXT),
        "cosine",
        "eps",
        low_res,
        sampling,
        f"sr{resolution}",
    )


def shapes_base_32(text_encoder: dict[str, Any] | None = None, text_dim: int = 384) -> StageConfig:
    """The bundled model's base (evalkit/model_cards/imagen-shapes.toml): 1.2M-parameter U-Net, 32 px, MiniLM text.

    v-prediction: with the cosine schedule's zero terminal SNR, an ε-model's x̂₀ at high noise is
    its ε error magnified by σ/α, which dynamic thresholding rescales into visible noise that
    few-step DDIM keeps; a v-model predicts x̂₀ ≈ −v̂ there directly.
    """
    model = UNetConfig(
        resolution=32,
        channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attn_resolutions=(8,),
        cross_attn_resolutions=(16, 8),
        head_dim=32,
        text_dim=text_dim,
        groups=8,
    )
    sampling = StageSampling(steps=25, guidance=4.0)
    return StageConfig(
        model, text_encoder or dict(MINILM_TEXT), "cosine", "v", None, sampling, "base"
    )


def shapes_sr_32_64(text_encoder: dict[str, Any] | None = None, text_dim: int = 384) -> StageConfig:
    """The bundled model's 32→64 Efficient U-Net (channels 16/32/64, blocks 1/1/2), MiniLM text, v-prediction."""
    model = EfficientUNetConfig(
        resolution=64,
        channels=(16, 32, 64),
        blocks=(1, 1, 2),
        cross_attn_resolutions=(16,),
        head_dim=32,
        text_dim=text_dim,
        groups=8,
    )
    sampling = StageSampling(steps=10, guidance=1.0, aug_level=0.15)
    return StageConfig(
        model, text_encoder or dict(MINILM_TEXT), "cosine", "v", 32, sampling, "sr64"
    )


def paper_base_64() -> StageConfig:
    """Imagen 2B base model, 64×64 (App. F.1): mult [1,2,3,4], 3 blocks, 64 ch/head, attention at 32,16,8."""
    model = UNetConfig(
        resolution=64,
        channels=512,
        channel_mult=(1, 2, 3, 4),
        num_res_blocks=3,
        attn_resolutions=(32, 16, 8),
        cross_attn_resolutions=(32, 16, 8),
        head_dim=64,
        embed_dim=2048,
        text_dim=4096,
        groups=32,
    )
    return StageConfig(
        model, dict(T5_XXL), "cosine", "eps", None, StageSampling(steps=256, guidance=7.0), "base"
    )


def paper_sr_64_256() -> StageConfig:
    """Imagen 600M Efficient U-Net 64→256 (App. B.1): (channels, blocks) = (128,2),(256,4),(512,8),(1024,8)."""
    model = EfficientUNetConfig(
        resolution=256,
        channels=(128, 256, 512, 1024),
        blocks=(2, 4, 8, 8),
        attn_resolutions=(32,),
        cross_attn_resolutions=(32,),
        head_dim=64,
        embed_dim=1024,
        text_dim=4096,
        groups=32,
    )
    sampling = StageSampling(steps=128, guidance=4.0, aug_level=0.2)
    return StageConfig(model, dict(T5_XXL), "cosine", "eps", 64, sampling, "sr256")


def paper_sr_256_1024() -> StageConfig:
    """Imagen 400M 256→1024: Efficient U-Net, no self-attention, text cross-attention only, linear schedule."""
    model = EfficientUNetConfig(
        resolution=1024,
        channels=(128, 256, 512, 1024),
        blocks=(2, 4, 8, 8),
        attn_resolutions=(),
        cross_attn_resolutions=(128,),
        head_dim=64,
        embed_dim=1024,
        text_dim=4096,
        groups=32,
    )
    sampling = StageSampling(steps=64, guidance=1.0, aug_level=0.0)
    return StageConfig(model, dict(T5_XXL), "linear", "eps", 256, sampling, "sr1024")


PRESETS: dict[str, Callable[[], StageConfig]] = {
    "tiny-base-32": tiny_base,
    "tiny-sr-32-64": tiny_sr,
    "shapes-base-32": shapes_base_32,
    "shapes-sr-32-64": shapes_sr_32_64,
    "paper-base-64": paper_base_64,
    "paper-sr-64-256": paper_sr_64_256,
    "paper-sr-256-1024": paper_sr_256_1024,
}

CASCADES: dict[str, tuple[str, ...]] = {
    "tiny": ("tiny-base-32", "tiny-sr-32-64"),
    "shapes": ("shapes-base-32", "shapes-sr-32-64"),
    "paper": ("paper-base-64", "paper-sr-64-256", "paper-sr-256-1024"),
}


def preset(name: str) -> StageConfig:
    """The stage config registered as ``name``."""
    if name not in PRESETS:
        raise UsageError(f"unknown Imagen preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
