"""The static trend dashboard (``evalkit dashboard --history DIR --out SITE``)."""

from evalkit.dashboard.build import Site, build_dashboard

__all__ = ["Site", "build_dashboard"]
