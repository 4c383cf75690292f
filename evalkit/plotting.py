"""The one plotting helper: matplotlib figures on the Agg canvas, saved atomically and reproducibly.

No pyplot: nothing global changes and no display is needed (matplotlib is imported lazily, it
is slow to import). :func:`save_figure` renders every format in memory first, then writes each
file atomically, with no dates or software versions in the metadata and a fixed SVG hash salt,
so the same figure gives the same bytes on every run and a failed save leaves no file behind.
Labels made from data go through :func:`evalkit.textsafe.mpl_text`.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from evalkit.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

BAR_COLOR = "#4C72B0"
OVERALL_COLOR = "#C44E52"
#: metadata that would change between runs (dates, versions) left out
_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}
_RC: dict[RcKeyType, Any] = {"svg.hashsalt": "evalkit", "svg.fonttype": "none"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_stem(name: str) -> str:
    """A file-name-safe version of a metric, parameter or pair name."""
    return _UNSAFE.sub("_", name).strip("._") or "plot"


def new_figure(
    width: float,
    height: float,
    *,
    layout: Literal["constrained", "compressed", "tight"] | None = "constrained",
) -> Any:
    """A matplotlib Figure (inches, 100 dpi) on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def render_figure(fig: Any, fmt: str, *, dpi: float = 120, tight: bool = False) -> bytes:
    """The bytes of ``fig`` as ``fmt`` ("png" or "svg"), reproducibly (no dates, fixed ids)."""
    import matplotlib

    if fmt not in _METADATA:
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(_METADATA)}")
    buf = io.BytesIO()
    extra = {"bbox_inches": "tight"} if tight else {}
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format=fmt, metadata=_METADATA[fmt], dpi=dpi, **extra)
    return buf.getvalue()


def save_figure(
    fig: Any,
    base: Path,
    *,
    dpi: float = 120,
    tight: bool = False,
    formats: tuple[str, ...] = ("png", "svg"),
) -> list[Path]:
    """Write ``base.png`` and ``base.svg`` (``formats``) atomically; returns the paths.

    Every format is rendered before any file is written. ``tight`` crops the saved image to
    what is drawn (for legends placed outside the axes).
    """
    base = Path(base)
    data = [(fmt, render_figure(fig, fmt, dpi=dpi, tight=tight)) for fmt in formats]
    return [atomic_write_bytes(base.parent / f"{base.name}.{fmt}", blob) for fmt, blob in data]
