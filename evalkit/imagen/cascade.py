"""A cascade of diffusion stages: a base model then any number of super-resolution stages.

Every image draws all of its noise (initial, augmentation, ancestral) from its own
``torch.Generator`` seeded from (request seed, stage index), and the network runs on
fixed-shape micro-batches of ``forward_batch`` rows (:mod:`evalkit.batching`), so an image
does not depend on which others share its batch. On a CPU every op of sampling runs with one
intra-op thread and the micro-batches run concurrently, one per thread, so an image does not
depend on the thread count either.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from evalkit.batching import run_in_micro_batches, single_threaded_ops, worker_count
from evalkit.composable import Concept, parse_composable
from evalkit.errors import UsageError
from evalkit.imagen.configs import StageConfig, StageSampling
from evalkit.imagen.diffusion import _bcast, eps_from_x0, to_eps_x0
from evalkit.imagen.guidance import RowPlan, combine_rows, plan_rows
from evalkit.imagen.samplers import SAMPLERS, per_sample_randn
from evalkit.imagen.schedules import alpha_sigma, get_schedule, time_grid
from evalkit.imagen.text_encoders import TextEmbedding, TextEncoder
from evalkit.imagen.thresholding import apply_threshold


def stage_seed(seed: int, stage: int) -> int:
    """63-bit seed of one image's generator at one stage: sha256(seed, stage)."""
    digest = hashlib.sha256(f"evalkit-imagen-stage\x1f{int(seed)}\x1f{stage}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def upsample_condition(x: torch.Tensor, size: int) -> torch.Tensor:
    """Low-res image in [−1, 1] → bicubic to ``size``, clipped to [−1, 1]."""
    if x.shape[-1] == size:
        return x.clamp(-1, 1)
    return (
        F.interpolate(x.float(), size=(size, size), mode="bicubic", align_corners=False)
        .clamp(-1, 1)
        .to(x.dtype)
    )


def augment_condition(
    lowres: torch.Tensor, aug_t: torch.Tensor, eps: torch.Tensor, schedule
) -> torch.Tensor:
    """Noise-conditioning augmentation: z = α(t_aug)·low-res + σ(t_aug)·ε (identity where t_aug = 0)."""
    alpha, sigma = alpha_sigma(schedule(aug_t.double()).float())
    noised = _bcast(alpha, lowres) * lowres + _bcast(sigma, lowres) * eps
    keep = (aug_t > 0).view(-1, *([1] * (lowres.ndim - 1))).to(lowres.device)
    return torch.where(keep, noised, lowres)


@dataclass
class Stage:
    """One stage: its config and network."""

    config: StageConfig
    model: nn.Module

    def __post_init__(self) -> None:
        self.model.eval().requires_grad_(False)
        self.schedule = get_schedule(self.config.schedule)


@dataclass
class CascadeOutput:
    """Final images in [−1, 1], optionally every stage's output, and per-stage latency in seconds."""

    images: torch.Tensor
    stages: list[torch.Tensor] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    resolutions: list[int] = field(default_factory=list)


class _Denoiser:
    """(z, t) ↦ (x̂₀, ε̂): guided network output over planned rows, then thresholding."""

    def __init__(
        self,
        stage: Stage,
        sampling: StageSampling,
        plan: RowPlan,
        text: TextEmbedding,
        lowres,
        aug_t,
        forward_batch: int | None,
        workers: int = 1,
    ):
        self.stage, self.sampling, self.plan = stage, sampling, plan
        idx = torch.tensor(plan.text, dtype=torch.long)
        self.tokens, self.mask, self.pooled = (a[idx.to(a.device)] for a in text)
        self.rows = torch.tensor(plan.sample, dtype=torch.long)
        self.lowres = lowres[self.rows.to(lowres.device)] if lowres is not None else None
        self.aug_t = aug_t[self.rows.to(aug_t.device)] if aug_t is not None else None
        self.forward_batch, self.workers = forward_batch, workers

    def _forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network on fixed-shape micro-batches of ``forward_batch`` rows (None: all at once)."""
        args = [z, t, self.tokens, self.mask, self.pooled, self.lowres, self.aug_t]
        size = self.forward_batch or len(z)
        return run_in_micro_batches(self.stage.model, *args, size=size, workers=self.workers)

    def __call__(self, z: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows.to(z.device)
        tt = torch.full((len(rows),), t, device=z.device, dtype=torch.float32)
        out = combine_rows(self._forward(z[rows], tt).float(), self.plan)
        lam = self.stage.schedule(torch.tensor(t, dtype=torch.float64)).float()
        eps, x0 = to_eps_x0(out, z, lam, self.stage.config.prediction)
        s = self.sampling
        if s.thresholding == "none":
            return x0, eps
        x0 = apply_threshold(x0, s.thresholding, s.percentile, s.max_threshold)
        return x0, eps_from_x0(z, x0, lam)


def as_concepts(prompt: str | Sequence[Concept], composable: bool = True) -> list[Concept]:
    """A prompt as weighted concepts (parsed when ``composable``; else one concept of weight 1)."""
    if isinstance(prompt, str):
        return parse_composable(prompt) if composable else [Concept(prompt, 1.0)]
    return list(prompt)


class Cascade:
    """Text encoder + stages; ``sample`` runs them in order."""

    def __init__(
        self,
        encoder: TextEncoder,
        stages: Sequence[Stage],
        device: str | torch.device = "cpu",
        forward_batch: int | None = 4,
    ):
        if not stages:
            raise UsageError("a cascade needs at least one stage")
        for k, st in enumerate(stages):
            cfg = st.config
            if k == 0 and cfg.is_sr:
                raise UsageError(
                    f"the first stage ({cfg.name!r}) is a super-resolution stage; it needs a base stage before it"
                )
            if k > 0 and cfg.low_res != stages[k - 1].config.resolution:
                raise UsageError(
                    f"stage {cfg.name!r} upsamples from {cfg.low_res} px but the stage before it makes {stages[k - 1].config.resolution} px"
                )
            if cfg.text_encoder != stages[0].config.text_encoder:
                raise UsageError(
                    f"stage {cfg.name!r} was trained with text encoder {cfg.text_encoder}, stage 0 with {stages[0].config.text_encoder}"
                )
            if cfg.model.text_dim != encoder.dim:
                raise UsageError(
                    f"stage {cfg.name!r} expects {cfg.model.text_dim}-d text embeddings, the encoder gives {encoder.dim}"
                )
        self.encoder, self.stages, self.device, self.forward_batch = (
            encoder,
            list(stages),
            torch.device(device),
            forward_batch,
        )
        for st in self.stages:
            st.model.to(self.device)

    @property
    def resolution(self) -> int:
        return self.stages[-1].config.resolution

    def default_sampling(self) -> list[StageSampling]:
        return [st.config.sampling for st in self.stages]

    def _text_table(self, groups: list[list[Concept]]) -> tuple[TextEmbedding, dict[str, int]]:
        texts = sorted({c.text for g in groups for c in g})
        enc = self.encoder.encode(texts)
        null = self.encoder.null(1)
        table = TextEmbedding(
            *(torch.cat([n, e]).to(self.device) for n, e in zip(null, enc, strict=True))
        )
        return table, {t: i + 1 for i, t in enumerate(texts)}

    def _prompts(
        self, prompts: Sequence[str | Sequence[Concept]], seeds: Sequence[int], composable: bool
    ) -> tuple[list[list[Concept]], TextEmbedding, dict[str, int]]:
        """Concept groups per prompt and the encoded text table (∅ first), after checking counts."""
        if len(prompts) != len(seeds):
            raise UsageError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        groups = [as_concepts(p, composable) for p in prompts]
        return (groups, *self._text_table(groups))

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str | Sequence[Concept]],
        seeds: Sequence[int],
        sampling: Sequence[StageSampling] | None = None,
        return_stages: bool = False,
        composable: bool = True,
        progress: bool = False,
    ) -> CascadeOutput:
        """Images for ``prompts`` with per-image ``seeds``; ``sampling`` overrides each stage's defaults."""
        sampling = list(sampling) if sampling is not None else self.default_sampling()
        if len(sampling) != len(self.stages):
            raise UsageError(f"{len(sampling)} sampling settings for {len(self.stages)} stages")
        with single_threaded_ops(self.device):  # one intra-op thread per op on a CPU
            groups, table, index = self._prompts(prompts, seeds, composable)
            out = CascadeOutput(images=torch.empty(0))
            prev = None
            for k, (stage, s) in enumerate(zip(self.stages, sampling, strict=True)):
                start = time.perf_counter()
                prev = self._sample_stage(k, stage, s, groups, table, index, seeds, prev)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                out.latency_s.append(time.perf_counter() - start)
                out.resolutions.append(stage.config.resolution)
                if return_stages:
                    out.stages.append(prev.clamp(-1, 1).cpu())
                if progress:
                    print(
                        f"imagen: stage {stage.config.name} ({stage.config.resolution}px) {out.latency_s[-1]:.2f}s",
                        file=sys.stderr,
                    )
            if prev is None:  # __init__ refuses a cascade without stages
                raise RuntimeError("the cascade has no stages")
            out.images = prev.clamp(-1, 1).cpu()
            return out

    @torch.no_grad()
    def sample_stage(
        self,
        k: int,
        prompts: Sequence[str | Sequence[Concept]],
        seeds: Sequence[int],
        lowres: torch.Tensor | None = None,
        sampling: StageSampling | None = None,
        composable: bool = True,
    ) -> torch.Tensor:
        """Stage ``k`` alone: a base stage from noise, an SR stage from given ``lowres`` images.

        ``lowres`` is (B, C, r, r) in [−1, 1] with r the stage's ``low_res``; feeding
        downsampled real images isolates a super-resolution stage's own quality. Noise is drawn
        as in :meth:`sample`, so with the previous stage's output this equals that stage of it.
        """
        if not 0 <= k < len(self.stages):
            raise UsageError(f"stage {k} does not exist; the cascade has {len(self.stages)}")
        stage = self.stages[k]
        cfg = stage.config
        with single_threaded_ops(self.device):
            groups, table, index = self._prompts(prompts, seeds, composable)
            if cfg.is_sr:
                want = (len(seeds), cfg.model.out_channels, cfg.low_res, cfg.low_res)
                if lowres is None or tuple(lowres.shape) != want:
                    got = None if lowres is None else tuple(lowres.shape)
                    raise UsageError(
                        f"stage {cfg.name!r} needs lowres images shaped {want}, got {got}"
                    )
                lowres = lowres.to(self.device, torch.float32)
            elif lowres is not None:
                raise UsageError(f"stage {cfg.name!r} is a base stage; it takes no lowres images")
            s = sampling or cfg.sampling
            return (
                self._sample_stage(k, stage, s, groups, table, index, seeds, lowres)
                .clamp(-1, 1)
                .cpu()
            )

    def _sample_stage(self, k, stage, s, groups, table, index, seeds, prev):
        cfg = stage.config
        label = f"stage {k} ({cfg.name}, {cfg.resolution}px)"
        gens = [torch.Generator().manual_seed(stage_seed(seed, k)) for seed in seeds]
        shape = (cfg.model.out_channels, cfg.resolution, cfg.resolution)
        x = per_sample_randn(gens, shape, self.device)
        lowres = aug_t = None
        if cfg.is_sr:
            lowres = upsample_condition(prev, cfg.resolution)
            aug_t = torch.full((len(seeds),), float(s.aug_level), device=self.device)
            lowres = augment_condition(
                lowres, aug_t, per_sample_randn(gens, lowres.shape[1:], self.device), stage.schedule
            )
        plan = plan_rows([[(index[c.text], c.weight * s.guidance) for c in g] for g in groups])
        workers = worker_count(self.device)  # micro-batches at once (the held count inside sample)
        denoise = _Denoiser(stage, s, plan, table, lowres, aug_t, self.forward_batch, workers)
        ts = time_grid(s.steps)

        def noise(i: int) -> torch.Tensor:
            return per_sample_randn(gens, shape, self.device)

        if s.sampler == "ddim":
            return SAMPLERS["ddim"](denoise, x, ts, stage.schedule, noise, eta=s.eta, label=label)
        return SAMPLERS["ddpm"](denoise, x, ts, stage.schedule, noise, label=label)
