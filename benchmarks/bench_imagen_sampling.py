"""Sampling throughput and peak memory: evalkit's Imagen cascade vs lucidrains' imagen-pytorch.

Both sample one fixed cascade configuration, the bundled model's (base U-Net 32 px, channels
32/64/64, self-attention at 8 px, text cross-attention at 16 and 8 px; Efficient U-Net 32→64,
channels 16/32/64, blocks 1/1/2, cross-attention at 16 px), with the same steps, guidance,
batch and precomputed MiniLM text embeddings (384-d, 64 tokens), random weights (speed does
not depend on them). imagen-pytorch runs in its own virtual environment (``--imagen-python``)
in a subprocess; its T5 config look-up (done at import) is answered locally, so nothing is
downloaded.

    .venv/bin/python benchmarks/bench_imagen_sampling.py --threads 2
    .venv/bin/python benchmarks/bench_imagen_sampling.py --device cuda --batch 64

Peak memory is the peak resident set size during sampling minus the resident size just before
(Linux ``/proc/self/clear_refs``) on CPU, and ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

DEFAULT_IMAGEN_PYTHON = "/tmp/imagen-bench-venv/bin/python"


def _rss_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class PeakMemory:
    """Peak memory (MiB) of the ``with`` body: CUDA allocator peak, or peak RSS growth on CPU."""

    def __init__(self, device: str) -> None:
        self.device, self.mib = device, float("nan")

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                    f.write("5")  # reset VmHWM to the current RSS
            except OSError:
                pass
            self.base = _rss_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.mib = (_rss_kib("VmHWM") * 1024 - self.base) / 2**20


def _time_runs(run, repeats: int, device: str) -> dict[str, float]:
    """Median/best seconds of ``repeats`` runs after a warm-up; peak memory over all of them.

    The peak is measured from before the warm-up run: allocators keep what the first run took,
    so a window opened after it would see no growth at all.
    """
    times = []
    with PeakMemory(device) as mem:
        run()  # warm-up (allocator, kernels, caches)
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return {
        "seconds_median": statistics.median(times),
        "seconds_min": min(times),
        "peak_mib": mem.mib,
    }


# --------------------------------------------------------------------------- evalkit side


def bench_evalkit(
    args: argparse.Namespace, prompts: list[str], forward_batch: int
) -> dict[str, Any]:
    """evalkit's Cascade with the bundled configs and random weights."""
    from evalkit.imagen.cascade import Cascade, Stage
    from evalkit.imagen.presets import preset
    from evalkit.imagen.text_encoders import build_text_encoder
    from evalkit.imagen.unet import build_model, randomize_

    configs = [preset("shapes-base-32"), preset("shapes-sr-32-64")]
    encoder = build_text_encoder(configs[0].text_encoder)
    encoder.encode(
        prompts
    )  # embeddings cached: sampling below reads them, as lucidrains gets them precomputed
    stages = []
    for k, cfg in enumerate(configs):
        torch.manual_seed(k)
        stages.append(Stage(cfg, randomize_(build_model(cfg.model), k)))
    cascade = Cascade(encoder, stages, device=args.device, forward_batch=forward_batch or None)
    sampling = [
        cfg.sampling.replace(steps=s, guidance=g, aug_level=args.aug_level if cfg.is_sr else 0.0)
        for cfg, s, g in zip(configs, args.steps, args.guidance, strict=True)
    ]
    seeds = list(range(len(prompts)))
    outputs: list[torch.Tensor] = []

    def run() -> None:
        outputs[:] = [cascade.sample(prompts, seeds, sampling).images]

    result = _time_runs(run, args.repeats, args.device)
    result["parameters"] = [sum(p.numel() for p in st.model.parameters()) for st in stages]
    result["images"] = outputs[0]  # for the thread-count comparison (not written to JSON)
    return result


def compare_thread_counts(args: argparse.Namespace, prompts: list[str]) -> int:
    """evalkit's throughput at each of ``--thread-counts`` and whether the images are equal."""
    fb = int(args.forward_batch.split(",")[0])
    rows = {}
    for n in [int(v) for v in args.thread_counts.split(",")]:
        torch.set_num_threads(n)
        print(f"evalkit forward_batch={fb}, {n} thread(s) ...", file=sys.stderr, flush=True)
        rows[n] = bench_evalkit(args, prompts, fb)
    first = next(iter(rows.values()))["images"]
    print(
        f"\nbatch {args.batch}, steps {args.steps}, guidance {args.guidance}, forward_batch {fb}, "
        f"device {args.device}, torch {torch.__version__}, "
        f"kernels {torch.backends.cpu.get_cpu_capability()}"
    )
    print(f"{'threads':>8s} {'images/s':>9s} {'s/batch':>8s}  images equal to the first row's")
    for n, r in rows.items():
        same = torch.equal(r["images"], first)
        print(f"{n:8d} {args.batch / r['seconds_median']:9.2f} {r['seconds_median']:8.2f}  {same}")
    return 0


def text_embeddings(prompts: list[str]) -> dict[str, torch.Tensor]:
    """MiniLM token embeddings (B, 64, 384) and mask, as evalkit's encoder makes them."""
    from evalkit.imagen.presets import MINILM_TEXT
    from evalkit.imagen.text_encoders import build_text_encoder

    emb = build_text_encoder(dict(MINILM_TEXT)).encode(prompts)
    return {"tokens": emb.tokens, "mask": emb.mask}


# --------------------------------------------------------------------------- imagen-pytorch side


def _offline_t5_config() -> None:
    """imagen-pytorch asks the HF hub for T5's config at import: answer with a local config."""
    import transformers

    real = transformers.T5Config.from_pretrained.__func__

    def local(cls, name, *a, **kw):
        if str(name).startswith("google/t5-v1_1-"):
            return transformers.T5Config(d_model=768)
        return real(cls, name, *a, **kw)

    transformers.T5Config.from_pretrained = classmethod(local)


def build_lucidrains(args: argparse.Namespace):
    """imagen-pytorch's Imagen with U-Nets shaped like the bundled evalkit stages."""
    _offline_t5_config()
    from imagen_pytorch import Imagen, Unet

    common = dict(
        text_embed_dim=384,
        max_text_len=64,
        attn_dim_head=32,
        attn_heads=2,
        init_cross_embed=False,
        init_conv_kernel_size=3,
        use_global_context_attn=False,
        attn_pool_text=False,
        final_resnet_block=False,
        pixel_shuffle_upsample=False,
    )
    # base: levels at 32/16/8 px, one residual block each, self-attention at 8 px, cross-attention
    # at 16 and 8 px. imagen-pytorch widens at the end of a level and needs dim_mults[0] = 1, so
    # its levels run at 32/32/64 channels (evalkit: 32/64/64): if anything, in its favour.
    base = Unet(
        dim=32,
        dim_mults=(1, 2, 2),
        num_resnet_blocks=0,
        layer_attns=(False, False, True),
        layer_cross_attns=(False, True, True),
        **common,
    )
    # SR: memory-efficient U-Net: 16 ch at 64 px (initial block), 32 ch at 32 px, 64 ch at 16 px
    # with two blocks and cross-attention; no middle attention
    sr = Unet(
        dim=16,
        dim_mults=(2, 4),
        num_resnet_blocks=(0, 1),
        layer_attns=False,
        layer_cross_attns=(False, True),
        memory_efficient=True,
        attend_at_middle=False,
        lowres_cond=True,
        **common,
    )
    imagen = Imagen(
        unets=(base, sr),
        image_sizes=(32, 64),
        text_embed_dim=384,
        timesteps=tuple(args.steps),
        cond_drop_prob=0.1,
        noise_schedules="cosine",
        lowres_sample_noise_level=args.aug_level,
        dynamic_thresholding_percentile=0.995,
    )
    return imagen.to(args.device).eval()


def bench_lucidrains(args: argparse.Namespace, emb_path: str) -> dict[str, Any]:
    """Worker: imagen-pytorch sampling on the same embeddings (runs in its own venv)."""
    imagen = build_lucidrains(args)
    emb = torch.load(emb_path, weights_only=True)
    tokens, mask = emb["tokens"].to(args.device), emb["mask"].to(args.device)

    @torch.no_grad()
    def run():
        torch.manual_seed(0)
        return imagen.sample(
            text_embeds=tokens,
            text_masks=mask,
            batch_size=len(tokens),
            cond_scale=tuple(args.guidance),
            use_tqdm=False,
        )

    result = _time_runs(run, args.repeats, args.device)
    result["parameters"] = [sum(p.numel() for p in u.parameters()) for u in imagen.unets]
    import imagen_pytorch

    result["imagen_pytorch"] = getattr(imagen_pytorch, "__version__", None) or _dist_version()
    return result


def _dist_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imagen-pytorch")
    except PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- driver


def _prompts(n: int) -> list[str]:
    from evalkit.suites.shapes import make_shapes_suite

    items = make_shapes_suite({}).items()
    return [items[i % len(items)].prompt for i in range(n)]


def _per_stage(text: str, cast) -> list:
    values = [cast(v) for v in text.split(",")]
    return values * 2 if len(values) == 1 else values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16, help="images per sampling call")
    p.add_argument("--steps", default="25,10", help="steps per stage")
    p.add_argument("--guidance", default="4,1", help="guidance per stage")
    p.add_argument("--aug-level", type=float, default=0.15)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--forward-batch", default="4,0", help="evalkit forward_batch values to time")
    p.add_argument(
        "--thread-counts",
        help="time evalkit alone at these intra-op thread counts (e.g. 1,2) and compare the images",
    )
    p.add_argument("--imagen-python", default=DEFAULT_IMAGEN_PYTHON)
    p.add_argument("--skip-lucidrains", action="store_true")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--worker", choices=["lucidrains"], help=argparse.SUPPRESS)
    p.add_argument("--emb", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.steps = _per_stage(args.steps, int)
    args.guidance = _per_stage(args.guidance, float)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.worker == "lucidrains":
        print(json.dumps(bench_lucidrains(args, args.emb)))
        return 0
    prompts = _prompts(args.batch)
    if args.thread_counts:
        return compare_thread_counts(args, prompts)
    rows: dict[str, dict[str, Any]] = {}
    for fb in [int(v) for v in args.forward_batch.split(",")]:
        print(f"evalkit forward_batch={fb} ...", file=sys.stderr, flush=True)
        rows[f"evalkit (forward_batch={fb or 'all'})"] = bench_evalkit(args, prompts, fb)
    if not args.skip_lucidrains:
        print("imagen-pytorch ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            emb_path = os.path.join(tmp, "emb.pt")
            torch.save(text_embeddings(prompts), emb_path)
            cmd = [args.imagen_python, __file__, "--worker", "lucidrains", "--emb", emb_path]
            cmd += ["--device", args.device, "--steps", ",".join(map(str, args.steps))]
            cmd += [
                "--guidance",
                ",".join(map(str, args.guidance)),
                "--aug-level",
                str(args.aug_level),
            ]
            cmd += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr[-4000:], file=sys.stderr)
                return out.returncode
            rows["imagen-pytorch"] = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"\nbatch {args.batch}, steps {args.steps}, guidance {args.guidance}, device {args.device}, "
        f"threads {torch.get_num_threads()}, torch {torch.__version__}"
    )
    print(
        f"{'implementation':34s} {'params (base, sr)':>22s} {'images/s':>9s} {'s/batch':>8s} {'peak MiB':>9s}"
    )
    for name, r in rows.items():
        r["images_per_s"] = args.batch / r["seconds_median"]
        params = ", ".join(f"{p / 1e6:.2f}M" for p in r["parameters"])
        print(
            f"{name:34s} {params:>22s} {r['images_per_s']:9.2f} {r['seconds_median']:8.2f} {r['peak_mib']:9.1f}"
        )
    if "imagen-pytorch" in rows:
        ref = rows["imagen-pytorch"]["images_per_s"]
        for name, r in rows.items():
            if name != "imagen-pytorch":
                print(f"speed ratio {name} / imagen-pytorch: {r['images_per_s'] / ref:.2f}x")
    if args.json:
        for r in rows.values():
            r.pop("images", None)
        args.json.write_text(
            json.dumps(
                {"args": {k: v for k, v in vars(args).items() if k != "json"}, "rows": rows},
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
