"""The in-repo Imagen cascade (Saharia et al. 2022): text encoders, U-Nets, diffusion, trainer.

Modules are small and imported on demand; importing this package loads nothing heavy
and never touches the network. Entry points:

- :func:`evalkit.imagen.cascade.Cascade` samples a cascade of stages.
- :func:`evalkit.imagen.checkpoint.save_stage` / :func:`~evalkit.imagen.checkpoint.load_stage`.
- :func:`evalkit.imagen.trainer.train_stage` trains one stage.
- :func:`evalkit.imagen.composable.parse_composable` parses ``"a AND b NOT c"`` prompts.
"""

#: Bumped whenever a change in this package can change sampled pixels (part of fingerprints).
CODE_VERSION = "imagen-2"  # 2: every CPU op single-threaded (thread-count independent)
