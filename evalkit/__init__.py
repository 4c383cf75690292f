"""evalkit: reproducible evaluation of text-to-image models.

Heavy dependencies (torch, open_clip, torch-fidelity) are imported only by the
modules that need them, so ``import evalkit`` and ``evalkit list`` stay fast.
"""

__version__ = "0.1.0"
