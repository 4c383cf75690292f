"""Metrics over a small common interface (see :mod:`evalkit.metrics.base`)."""
