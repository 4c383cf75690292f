"""Generators: models behind one interface (see :mod:`evalkit.generators.base`)."""
