"""Quality of the bundled Imagen (evalkit/model_cards/imagen-shapes.toml) against a random-init cascade.

Runs ``evalkit run`` three times on the same ``shapes`` prompts and seeds: the bundled model,
a random-init cascade of the same presets (``random=shapes``, marked uncalibrated) and the
``reference`` pseudo-model (the suite's own renders, the ceiling). Prints FID, KID and shapes
accuracy overall and per category (95% bootstrap intervals), the FID ratio random/bundled,
and writes the table as JSON.

    .venv/bin/python benchmarks/bundled_imagen_quality.py --num-items 200
    .venv/bin/python benchmarks/bundled_imagen_quality.py --model my-card --num-items 500

The issue's bar for the bundled model: FID at least 5x lower than random init, shapes accuracy
at least 60% on single-object colour+shape prompts (category ``single``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

CATEGORIES = ("single", "colors", "counting", "positional", "composition")


def run(model: str, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """One ``evalkit run``; returns its results.json."""
    cmd = [sys.executable, "-m", "evalkit.cli", "run", "--model", model, "--suite", "shapes"]
    cmd += ["--num-samples", str(args.num_items), "--seed", str(args.seed)]
    cmd += ["--metrics", "fid,kid,shapes_accuracy", "--out", str(args.out), "--quiet"]
    cmd += ["--batch-size", str(args.batch_size), "--no-report", *extra]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"evalkit run failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    path = Path(done.stdout.strip().splitlines()[-1])
    return json.loads(path.read_text(encoding="utf-8"))


def card_sampling_options(model: str) -> list[str]:
    """``--model-opt`` flags with the card's sampling settings, so random init samples alike."""
    from evalkit.cards import load_card
    from evalkit.generators.imagen_adapter import DEFAULT_CARD
    from evalkit.registry import MODELS

    card_path = DEFAULT_CARD if model == "imagen" else Path(str(MODELS.entry(model).source))
    if card_path.suffix != ".toml":
        return []
    flags = []
    for key, value in load_card(card_path).sampling.items():
        text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        flags += ["--model-opt", f"{key}={text}"]
    return flags


def _fmt(metric: dict[str, Any] | None, pct: bool = False) -> str:
    if metric is None or metric.get("value") is None:
        return "-"
    scale = 100.0 if pct else 1.0
    text = f"{metric['value'] * scale:.1f}" if pct else f"{metric['value']:.2f}"
    interval = metric.get("interval")
    if interval:
        text += f" [{interval[0] * scale:.1f}, {interval[1] * scale:.1f}]"
    return text


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """FID, KID, accuracy overall and per category, generation time."""
    metrics = results["metrics"]
    acc = metrics["shapes_accuracy"]
    per_cat = acc.get("per_category") or {}
    timings = results["manifest"].get("timings") or {}
    return {
        "fid": metrics["fid"]["value"],
        "kid": metrics["kid"]["value"],
        "accuracy": acc["value"],
        "accuracy_interval": acc.get("interval"),
        "per_category": {c: per_cat.get(c) for c in CATEGORIES},
        "generate_s": timings.get("generate_s"),
        "images_generated": timings.get("images_generated"),
        "uncalibrated": results.get("uncalibrated"),
        "run_id": results["run_id"],
        "_raw": metrics,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="imagen", help="model to test (default: the bundled card)")
    p.add_argument("--num-items", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path("reports/bundled-quality"))
    p.add_argument("--json", type=Path, help="write the table here as JSON")
    args = p.parse_args(argv)

    rows = {
        args.model: summarize(run(args.model, args, [])),
        "random init (same presets)": summarize(
            run(
                "imagen",
                args,
                [
                    "--model-opt",
                    "random=shapes",
                    "--model-opt",
                    "text_encoder=minilm",
                    "--allow-random-weights",
                    *card_sampling_options(args.model),
                ],
            )
        ),
        "reference renders": summarize(run("reference", args, [])),
    }
    print(f"\nshapes suite, {args.num_items} prompts x 1 image, seed {args.seed}, 64x64\n")
    head = ["model", "FID", "KID", "accuracy %", *CATEGORIES, "gen s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, r in rows.items():
        cells = [name, f"{r['fid']:.2f}", f"{r['kid']:.4f}"]
        cells.append(_fmt(r["_raw"]["shapes_accuracy"], pct=True))
        cells += [_fmt(r["per_category"][c], pct=True) for c in CATEGORIES]
        cells.append(f"{r['generate_s']:.0f}" if r["generate_s"] else "-")
        print("| " + " | ".join(cells) + " |")
    trained, random = rows[args.model], rows["random init (same presets)"]
    ratio = random["fid"] / trained["fid"]
    single = trained["per_category"]["single"]["value"]
    print(f"\nFID random/bundled: {ratio:.1f}x (bar: >= 5x)")
    print(f"accuracy on single-object prompts: {100 * single:.1f}% (bar: >= 60%)")
    if args.json:
        table = {k: {kk: vv for kk, vv in v.items() if kk != "_raw"} for k, v in rows.items()}
        table["fid_ratio_random_over_bundled"] = ratio
        args.json.write_text(json.dumps(table, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
