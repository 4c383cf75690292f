"""Tiny diffusers pipelines built entirely in code (no hub access), saved to local folders.

Diffusers' own test fixtures download tokenizers from the hub, so everything here is made
from scratch: a byte-level BPE CLIP tokenizer from a small ``vocab.json``/``merges.txt``, a
T5-style word-level tokenizer wrapped in ``PreTrainedTokenizerFast``, and random tiny
networks. Every builder seeds torch before creating weights, so a pipeline's files are the
same on every call. Each pipeline runs two steps on a CPU in well under a second.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import torch

#: characters the tiny CLIP vocabulary knows (anything else maps to the unknown token)
_CLIP_CHARS = string.ascii_lowercase + string.digits + ".,:;!?-'"
#: a few merges so the BPE model has real work to do
_CLIP_MERGES = ("r e", "re d</w>", "c u", "b e</w>", "b l", "bl u", "o g</w>", "f og</w>")
#: words of the tiny T5-style vocabulary
_T5_WORDS = (
    "<pad>",
    "</s>",
    "<unk>",
    "a",
    "an",
    "the",
    "red",
    "green",
    "blue",
    "cube",
    "sphere",
    "cone",
    "on",
    "table",
    "fog",
    "and",
    "not",
    "photo",
    "of",
)
T5_DIM = 32
CLIP_DIM = 32


def clip_tokenizer(folder: Path) -> Any:
    """A CLIP tokenizer (``model_max_length=77``) from a tiny vocab and merges file in ``folder``."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in _CLIP_CHARS:
        vocab[c] = len(vocab)
    for c in _CLIP_CHARS:
        vocab[c + "</w>"] = len(vocab)
    for merge in _CLIP_MERGES:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(_CLIP_MERGES) + "\n", encoding="utf-8"
    )
    return CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77
    )


def t5_tokenizer() -> Any:
    """A T5-style tokenizer: lower-cased whitespace words, ``</s>`` appended, ``<pad>`` = 0."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(_T5_WORDS)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=128,
    )


def _clip_text_config(vocab_size: int, **extra: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=CLIP_DIM,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=1,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        **extra,
    )


def _t5_encoder() -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(_T5_WORDS),
        d_model=T5_DIM,
        d_kv=8,
        d_ff=37,
        num_layers=1,
        num_heads=4,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config).eval()


def _tiny_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=32,
    )


def _tiny_safety_checker() -> tuple[Any, Any]:
    """A tiny (random) StableDiffusionSafetyChecker and its CLIP image processor."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1},
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return StableDiffusionSafetyChecker(config).eval(), processor


def save_sd_pipeline(folder: Path, with_safety_checker: bool = True) -> Path:
    """A tiny StableDiffusionPipeline (32 px: 16×16 latents, VAE factor 2) saved to ``folder``."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tokenizer = clip_tokenizer(folder.with_name(folder.name + "-tokenizer"))
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=CLIP_DIM,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    safety_checker, feature_extractor = (
        _tiny_safety_checker() if with_safety_checker else (None, None)
    )
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(_clip_text_config(len(tokenizer))).eval(),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=safety_checker,
        feature_extractor=feature_extractor,
        requires_safety_checker=with_safety_checker,
    )
    pipe.save_pretrained(folder)
    return folder


def save_sdxl_pipeline(folder: Path) -> Path:
    """A tiny StableDiffusionXLPipeline (32 px) with two CLIP text encoders, saved to ``folder``."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tokenizer = clip_tokenizer(folder.with_name(folder.name + "-tokenizer"))
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + CLIP_DIM,
        cross_attention_dim=2 * CLIP_DIM,
        norm_num_groups=4,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(_clip_text_config(len(tokenizer))).eval(),
        text_encoder_2=CLIPTextModelWithProjection(
            _clip_text_config(len(tokenizer), projection_dim=CLIP_DIM)
        ).eval(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def save_pixart_pipeline(folder: Path) -> Path:
    """A tiny PixArtAlphaPipeline (32 px: 16×16 latents, patch 2) saved to ``folder``."""
    from diffusers import DDIMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=16,
        num_layers=1,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_channels=T5_DIM,
        in_channels=4,
        cross_attention_dim=16,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    pipe = PixArtAlphaPipeline(
        tokenizer=t5_tokenizer(),
        text_encoder=_t5_encoder(),
        vae=_tiny_vae(),
        transformer=transformer,
        scheduler=DDIMScheduler(),
    )
    pipe.save_pretrained(folder)
    return folder


def _if_unet(sample_size: int, in_channels: int, super_resolution: bool) -> Any:
    from diffusers import UNet2DConditionModel

    extra: dict[str, Any] = {}
    if super_resolution:
        extra = {
            "class_embed_type": "timestep",
            "mid_block_scale_factor": 1.414,
            "time_embedding_act_fn": "gelu",
            "time_embedding_dim": 32,
        }
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=6,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        cross_attention_dim=T5_DIM,
        encoder_hid_dim=T5_DIM,
        attention_head_dim=8,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
        norm_num_groups=8,
        **extra,
    )


def _if_scheduler() -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=1.0,
        prediction_type="epsilon",
        variance_type="learned_range",
    )


def save_if_pipelines(stage1: Path, stage2: Path) -> tuple[Path, Path]:
    """A tiny DeepFloyd IF cascade: IFPipeline (16 px, T5-style encoder) and IFSuperResolution (32 px)."""
    from diffusers import DDPMScheduler, IFPipeline, IFSuperResolutionPipeline

    torch.manual_seed(0)
    tokenizer, text_encoder = t5_tokenizer(), _t5_encoder()
    IFPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=_if_unet(16, 3, super_resolution=False),
        scheduler=_if_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    ).save_pretrained(stage1)
    IFSuperResolutionPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=_if_unet(32, 6, super_resolution=True),
        scheduler=_if_scheduler(),
        image_noising_scheduler=DDPMScheduler(
            num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"
        ),
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    ).save_pretrained(stage2)
    return stage1, stage2
