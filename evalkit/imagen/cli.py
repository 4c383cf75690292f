"""``evalkit train``: train one Imagen cascade stage, and write a model card for finished stages.

``train_app`` is mounted by the main command line as ``evalkit train``; it also runs on its
own as ``python -m evalkit.imagen.cli``::

    evalkit train imagen --data shapes --stage base --steps 3000 --out runs/base
    evalkit train imagen --data shapes --stage sr --steps 2000 --out runs/sr64
    evalkit train card --base runs/base/base.safetensors --sr runs/sr64/sr64.safetensors \\
        --name my-imagen --out models/my-imagen.toml

Training runs in chunks of ``--checkpoint-every`` steps (each resumes the last checkpoint,
which the trainer makes exact), appending every step's loss to ``OUT/losses.tsv``; at the
end ``OUT/<stage>.safetensors`` holds the EMA weights and ``OUT/train_summary.json`` the
recipe, the data and the loss curve. Progress goes to stderr.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from evalkit.console import run_console
from evalkit.errors import InputError, UsageError

# The commands import the training code (torch, datasets) inside their functions: this module
# is imported by every ``evalkit`` command line, which must start without torch.

train_app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Train in-repo Imagen stages and write model cards for them.",
)

DEFAULT_PRESETS = {"base": "shapes-base-32", "sr": "shapes-sr-32-64"}
#: embedding cache entries kept in memory while training (the shapes grammar has ~4.6k prompts)
TEXT_CACHE_CAPACITY = 16384


def build_data(source: str, resolution: int, seed: int = 0) -> Any:
    """``shapes[:CAT=W,...]``, an image folder, a ``.jsonl`` manifest or ``hf:NAME[:SPLIT]`` → a data source."""
    from evalkit.imagen.data import HFDataset, ImageFolder, JsonlManifest

    if source == "shapes" or source.startswith("shapes:"):
        from evalkit.imagen.shapes_data import ShapesTrainingData, parse_weights

        weights = parse_weights(source.partition(":")[2])
        return ShapesTrainingData(resolution=resolution, weights=weights, seed=seed)
    if source.startswith("hf:"):
        name, _, split = source[3:].partition(":")
        if not name:
            raise UsageError("--data hf:NAME needs a dataset name, e.g. hf:user/captions")
        return HFDataset(name, split=split or "train")
    path = Path(source).expanduser()
    if path.suffix == ".jsonl":
        return JsonlManifest(path)
    if path.is_dir():
        return ImageFolder(path)
    raise InputError(
        f"--data {source!r}: not 'shapes', 'hf:NAME', a .jsonl manifest or an existing image folder"
    )


def stage_config(stage: str, preset_name: str | None, text_encoder: dict[str, Any], text_dim: int):
    """The preset's stage config with the chosen text encoder (and its embedding width)."""
    from evalkit.imagen.presets import preset

    if stage not in DEFAULT_PRESETS:
        raise UsageError(f"--stage {stage!r}: choose base or sr")
    cfg = preset(preset_name or DEFAULT_PRESETS[stage])
    if cfg.is_sr != (stage == "sr"):
        kind = "a super-resolution" if cfg.is_sr else "a base"
        raise UsageError(f"preset {preset_name!r} is {kind} stage, not --stage {stage}")
    model = dataclasses.replace(cfg.model, text_dim=text_dim)
    return cfg.replace(model=model, text_encoder=dict(text_encoder))


def _append_losses(path: Path, first_step: int, losses: list[float]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for i, loss in enumerate(losses):
            f.write(f"{first_step + i + 1}\t{loss:.6f}\n")


def read_losses(path: Path) -> list[tuple[int, float]]:
    """(step, loss) rows of a ``losses.tsv``, the last value kept for a step logged twice."""
    if not path.is_file():
        return []
    rows: dict[int, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        step, _, loss = line.partition("\t")
        if step.strip():
            rows[int(step)] = float(loss)
    return sorted(rows.items())


def loss_curve(rows: list[tuple[int, float]], window: int = 100) -> list[dict[str, float]]:
    """Mean loss per ``window`` steps: [{"step": last step of the window, "loss": mean}]."""
    out = []
    for start in range(0, len(rows), window):
        part = rows[start : start + window]
        out.append({"step": part[-1][0], "loss": sum(v for _, v in part) / len(part)})
    return out


@train_app.command("imagen")
def train_imagen(
    out: Annotated[
        Path, typer.Option(help="Run folder: checkpoints, losses.tsv, the exported stage.")
    ],
    data: Annotated[
        str, typer.Option(help="shapes[:CAT=W,...] | FOLDER | manifest.jsonl | hf:NAME[:SPLIT]")
    ] = "shapes",
    stage: Annotated[str, typer.Option(help="base or sr (super-resolution).")] = "base",
    preset: Annotated[
        str | None, typer.Option(help="Stage preset (default shapes-base-32 / shapes-sr-32-64).")
    ] = None,
    steps: Annotated[int, typer.Option(help="Total optimisation steps.")] = 3000,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 32,
    lr: Annotated[
        float, typer.Option(help="Peak AdamW learning rate (after linear warm-up).")
    ] = 5e-4,
    warmup: Annotated[int, typer.Option(help="Linear warm-up steps.")] = 200,
    lr_schedule: Annotated[
        str,
        typer.Option(help="After warm-up: constant, or cosine decay to --min-lr-ratio at --steps."),
    ] = "constant",
    min_lr_ratio: Annotated[
        float, typer.Option(help="Cosine schedule: final learning rate as a share of --lr.")
    ] = 0.1,
    ema_decay: Annotated[float, typer.Option(help="EMA decay of the exported weights.")] = 0.999,
    text_dropout: Annotated[
        float, typer.Option(help="Share of captions replaced by ∅ (classifier-free guidance).")
    ] = 0.1,
    grad_clip: Annotated[float, typer.Option(help="Gradient norm clip (0 = off).")] = 1.0,
    aug_max: Annotated[
        float, typer.Option(help="SR: noise-augmentation levels drawn from U(0, aug_max).")
    ] = 0.5,
    checkpoint_every: Annotated[
        int, typer.Option(help="Steps between checkpoints (and loss-log flushes).")
    ] = 250,
    seed: Annotated[int, typer.Option(help="Training seed (data order, noise, dropout).")] = 0,
    data_seed: Annotated[int, typer.Option(help="Seed of the shapes scenes.")] = 0,
    text_encoder: Annotated[str, typer.Option(help="minilm | tiny | t5:NAME (frozen).")] = "minilm",
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda or cuda:N (default: cuda if available).")
    ] = None,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0 = torch's default).")] = 0,
    resume: Annotated[
        bool, typer.Option(help="Continue from OUT's latest checkpoint if there is one.")
    ] = True,
    text_cache: Annotated[
        bool, typer.Option(help="Keep prompt embeddings on disk under the evalkit cache.")
    ] = True,
    stop_after: Annotated[
        int | None, typer.Option(help="End this call after N more steps (resume later).")
    ] = None,
) -> None:
    """Train one stage of the in-repo Imagen cascade."""
    import torch

    from evalkit.atomic import atomic_write_json
    from evalkit.generators.imagen_adapter import text_encoder_spec
    from evalkit.imagen.text_encoders import build_text_encoder
    from evalkit.imagen.trainer import TrainConfig, latest_checkpoint, train_stage

    if threads > 0:
        torch.set_num_threads(threads)
    from evalkit.paths import cache_root

    encoder = build_text_encoder(
        text_encoder_spec(text_encoder), cache_root() if text_cache else None
    )
    encoder.cache.capacity = TEXT_CACHE_CAPACITY
    cfg_stage = stage_config(stage, preset, encoder.spec, encoder.dim)
    config = TrainConfig(
        stage=cfg_stage,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup,
        lr_schedule=lr_schedule,
        min_lr_ratio=min_lr_ratio,
        ema_decay=ema_decay,
        text_dropout=text_dropout,
        grad_clip=grad_clip,
        aug_max=aug_max,
        checkpoint_every=checkpoint_every,
        seed=seed,
        log_every=min(50, checkpoint_every),
    )
    source = build_data(data, cfg_stage.resolution, data_seed)
    out.mkdir(parents=True, exist_ok=True)
    loss_log = out / "losses.tsv"
    if not resume:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        loss_log.unlink(missing_ok=True)
    folder = latest_checkpoint(out)
    step = int(folder.name.split("-")[-1]) if folder is not None else 0
    end = steps if stop_after is None else min(steps, step + stop_after)
    started = time.perf_counter()
    while True:
        result = train_stage(
            config,
            source,
            out,
            text_encoder=encoder,
            device=device,
            stop_after=max(0, min(checkpoint_every, end - step)),
        )
        _append_losses(loss_log, result.step - len(result.losses), result.losses)
        progressed, step = result.step > step, result.step
        if step >= end or not progressed:
            break
    rows = read_losses(loss_log)
    tail = [v for _, v in rows[-100:]]
    summary = {
        "train_config": config.to_dict(),
        "data": source.describe() if hasattr(source, "describe") else {"source": data},
        "steps_done": step,
        "final_loss_mean_last_100": sum(tail) / len(tail) if tail else None,
        "loss_curve": loss_curve(rows),
        "wall_s_this_call": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
        "device": str(device or ("cuda" if torch.cuda.is_available() else "cpu")),
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
    }
    atomic_write_json(out / "train_summary.json", summary)
    print(f"imagen train: {cfg_stage.name} at step {step}/{steps}", file=sys.stderr)
    typer.echo(str(result.checkpoint))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def card_text(
    name: str,
    weights: dict[str, tuple[str, str]],
    sampling: dict[str, Any],
    description: str = "",
) -> str:
    """TOML of a model card: ``weights`` maps key → (path relative to the card, sha256)."""
    lines = [f"name = {_toml_value(name)}", 'adapter = "imagen"']
    if description:
        lines.append(f"description = {_toml_value(description)}")
    for key, (path, sha) in weights.items():
        lines += ["", f"[weights.{key}]", f"path = {_toml_value(path)}", f'sha256 = "{sha}"']
    if sampling:
        lines += ["", "[sampling]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in sampling.items()]
    return "\n".join(lines) + "\n"


def _floats(text: str | None) -> list[float] | float | None:
    if not text:
        return None
    values = [float(v) for v in text.split(",") if v.strip()]
    return values[0] if len(values) == 1 else values


@train_app.command("card")
def write_card(
    name: Annotated[str, typer.Option(help="Model name (the registry name of the card).")],
    base: Annotated[Path, typer.Option(help="The base stage checkpoint (.safetensors).")],
    sr: Annotated[
        list[Path] | None, typer.Option(help="Super-resolution stage checkpoints (repeatable).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Card path (default models/NAME.toml).")] = None,
    copy_weights: Annotated[
        bool, typer.Option(help="Copy the checkpoints (and config JSONs) to CARD_DIR/NAME/.")
    ] = True,
    steps: Annotated[
        str | None, typer.Option(help="Sampling steps, one or one per stage: 25,10.")
    ] = None,
    guidance: Annotated[str | None, typer.Option(help="Guidance weight(s), e.g. 4,1.")] = None,
    aug_level: Annotated[
        float | None, typer.Option(help="SR noise-augmentation level at sampling.")
    ] = None,
    description: Annotated[str, typer.Option(help="One line shown by `evalkit list models`.")] = "",
) -> None:
    """Write a model card for finished stages, with their sha256s."""
    from evalkit.atomic import atomic_write_text
    from evalkit.hashing import sha256_file
    from evalkit.imagen.checkpoint import read_stage_config

    card = out or Path("models") / f"{name}.toml"
    card.parent.mkdir(parents=True, exist_ok=True)
    weights: dict[str, tuple[str, str]] = {}
    for path in [base, *(sr or [])]:
        if not path.is_file():
            raise InputError(f"stage checkpoint {path} does not exist")
        key = read_stage_config(path).name
        if key in weights:
            raise UsageError(f"two checkpoints are both stage {key!r}")
        if copy_weights:
            folder = card.parent / name
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{key}.safetensors"
            if path.resolve() != target.resolve():
                shutil.copyfile(path, target)
                if path.with_suffix(".json").is_file():
                    shutil.copyfile(path.with_suffix(".json"), target.with_suffix(".json"))
            path = target
        rel = Path(os.path.relpath(path.resolve(), card.parent.resolve()))
        weights[key] = (rel.as_posix(), sha256_file(path))
    sampling: dict[str, Any] = {}
    for key, value in (("steps", _floats(steps)), ("guidance", _floats(guidance))):
        if value is not None:
            if key == "steps":
                value = [int(v) for v in value] if isinstance(value, list) else int(value)
            sampling[key] = value
    if aug_level is not None:
        sampling["aug_level"] = aug_level
    atomic_write_text(card, card_text(name, weights, sampling, description))
    typer.echo(str(card))


#: printed when training is interrupted (Ctrl-C)
TRAIN_INTERRUPT_HINT = (
    "interrupted: checkpoints are kept; rerun the same command to resume from the latest one"
)


def main(argv: list[str] | None = None) -> int:
    """``python -m evalkit.imagen.cli ARGS`` is ``evalkit train ARGS`` (same errors and exit codes).

    Runs :data:`train_app` through :func:`evalkit.console.run_console`, as ``evalkit`` does, so
    this module never imports the main command line (which mounts it).
    """
    args = sys.argv[1:] if argv is None else argv
    return run_console(train_app, args, interrupt_hint=TRAIN_INTERRUPT_HINT)


if __name__ == "__main__":
    sys.exit(main())
