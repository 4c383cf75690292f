"""Prompt suites: each yields items and, where it has them, reference images."""
