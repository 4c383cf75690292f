"""The built-in registry entries, as lazy ``module:attr`` targets (nothing heavy imported here).

:func:`register_builtins` fills the registries that :mod:`evalkit.registry` creates; it is
handed them, so this module (and :mod:`evalkit.cards`) never imports the registry back.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from evalkit.cards import card_entries, card_entry_for_path
from evalkit.registry_entry import Entry

if TYPE_CHECKING:
    from evalkit.registry import Registry


def _images_entry(name: str) -> Entry | None:
    """``images:DIR``: existing images scored as a model (the folder is bound into the factory)."""
    if not name.startswith("images:"):
        return None
    folder = name[len("images:") :]

    def factory(options: dict[str, Any], context: Any) -> Any:
        from evalkit.generators.images import make_images_generator

        return make_images_generator({**options, "dir": folder}, context)

    return Entry(name, factory, f"existing images in {folder}", "images:DIR")


def register_builtins(models: Registry, suites: Registry, metrics: Registry) -> None:
    """Register the built-in models, suites and metrics, model cards and ``images:DIR``."""
    # Models (generators). Factories take (options: dict, context: GeneratorContext).
    models.register(
        "reference",
        "evalkit.generators.reference:make_reference_generator",
        description="the suite's own reference images (real-vs-real sanity numbers)",
    )
    models.register(
        "toy",
        "evalkit.generators.toy:make_toy_generator",
        description="tiny deterministic procedural generator for tests and plumbing",
    )
    models.register(
        "imagen",
        "evalkit.generators.imagen_adapter:make_imagen_generator",
        description="in-repo Imagen cascade (weights from a model card, or random with --allow-random-weights)",
    )
    models.register(
        "diffusers",
        "evalkit.generators.diffusers:make_diffusers_generator",
        description="any diffusers text-to-image pipeline by hub id or local path (SD, SDXL, PixArt, DeepFloyd IF)",
    )
    models.register(
        "rerank",
        "evalkit.generators.rerank:make_rerank_generator",
        description="DALL-E-style best-of-N by CLIP score around any registered model",
    )
    models.add_source(partial(card_entries, models))
    models.add_resolver(partial(card_entry_for_path, models))
    models.add_resolver(_images_entry)

    # Suites. Factories take (options: dict).
    suites.register(
        "shapes",
        "evalkit.suites.shapes:make_shapes_suite",
        description="offline procedurally rendered compositional scenes",
    )
    suites.register(
        "coco",
        "evalkit.suites.coco:make_coco_suite",
        description="zero-shot COCO FID-30K (Imagen protocol, 2014 val by default)",
    )
    suites.register(
        "drawbench",
        "evalkit.suites.drawbench:make_drawbench_suite",
        description="DrawBench, 200 prompts in 11 categories (fetched, not bundled)",
    )
    suites.register(
        "csv",
        "evalkit.suites.prompt_files:make_csv_suite",
        description="your own prompts from a CSV file (prompt[,id,category])",
    )
    suites.register(
        "jsonl",
        "evalkit.suites.prompt_files:make_jsonl_suite",
        description="your own prompts from a JSONL file (prompt[,id,category])",
    )

    # Metrics. Factories take (options: dict, context: MetricContext).
    metrics.register(
        "fid",
        "evalkit.metrics.fid:make_fid",
        description="Fréchet Inception Distance (TF-Inception pool3, torch-fidelity exact)",
    )
    metrics.register(
        "kid",
        "evalkit.metrics.kid:make_kid",
        description="Kernel Inception Distance (unbiased MMD², seeded subsets)",
    )
    metrics.register(
        "is",
        "evalkit.metrics.inception_score:make_inception_score",
        description="Inception Score (seeded splits)",
    )
    metrics.register(
        "prc",
        "evalkit.metrics.feature_sets:make_prc",
        description="precision (value) and recall, k=3, VGG16 features (Kynkäänniemi et al. 2019)",
    )
    metrics.register(
        "density_coverage",
        "evalkit.metrics.feature_sets:make_density_coverage",
        description="coverage (value) and density, k=5, VGG16 features (Naeem et al. 2020)",
    )
    metrics.register(
        "cmmd",
        "evalkit.metrics.feature_sets:make_cmmd",
        description="CMMD: RBF MMD on CLIP ViT-L/14@336 embeddings (Jayasumana et al. 2024)",
    )
    metrics.register(
        "fd_dinov2",
        "evalkit.metrics.feature_sets:make_fd_dinov2",
        description="Frechet distance on DINOv2 ViT-L/14 features (Stein et al. 2023)",
    )
    metrics.register(
        "clip_score",
        "evalkit.metrics.clip_score:make_clip_score",
        description="CLIP score with open_clip (raw cosine and x100)",
    )
    metrics.register(
        "shapes_accuracy",
        "evalkit.metrics.shapes_accuracy:make_shapes_accuracy",
        description="GenEval-style per-image check of a shapes prompt's every clause",
    )
