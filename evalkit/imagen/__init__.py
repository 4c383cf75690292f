"""The in-repo Imagen cascade (Saharia et al. 2022): text encoders, U-Nets, diffusion, trainer.

Modules are small and imported on demand; importing this package loads nothing heavy
and never touches the network. Entry points:

- :func:`evalkit.imagen.cascade.Cascade` samples a cascade of stages.
- :func:`evalkit.imagen.checkpoint.save_stage` / :func:`~evalkit.imagen.checkpoint.load_stage`.
- :func:`evalkit.imagen.trainer.train_stage` trains one stage.
- composed prompts (``"a AND b NOT c"``) are parsed by the neutral
  :func:`evalkit.composable.parse_composable`, shared with the diffusers adapter.
"""

#: Bumped whenever a change in this package can change sampled pixels (part of fingerprints).
CODE_VERSION = "imagen-2"  # 2: every CPU op single-threaded (thread-count independent)
