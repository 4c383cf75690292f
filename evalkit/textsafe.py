"""Text from data (prompts, model names, rater names, reasons) made inert where it is shown.

The one escaping helper of evalkit: Markdown (reports, pull-request comments, job summaries),
HTML (report pages, the dashboard) and matplotlib labels. Whatever a results file, a study or
a history record holds, the output shows it as text: no raw HTML, no table breaks, no
emphasis, links or code spans that the data did not ask for, no line breaks.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any
from urllib.parse import quote

#: control characters (CR and LF included) become one space: one line, nothing invisible
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
#: Markdown punctuation that starts emphasis, code, links or strikethrough, or ends a cell
_MD_PUNCT = re.compile(r"[\\`*~\[\]|]")
#: ``_`` emphasises only at a word boundary (``clip_score`` stays as it is)
_MD_UNDERSCORE = re.compile(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
_MPL_MAX = 60


def one_line(value: Any) -> str:
    """``str(value)`` with every run of control characters (``\\r``, ``\\n``, tabs ...) as one space."""
    return _CONTROL.sub(" ", str(value))


def md_text(value: Any) -> str:
    """Text safe anywhere in GitHub Markdown, table cells included.

    One line; ``&``, ``<`` and ``>`` as HTML entities (no raw HTML, no autolinks);
    backslash, backticks, ``*``, ``~``, brackets and ``|`` backslash-escaped, and ``_`` where it
    could start or end emphasis.
    """
    text = html.escape(one_line(value), quote=False)
    text = _MD_PUNCT.sub(lambda m: "\\" + m.group(0), text)
    return _MD_UNDERSCORE.sub(r"\\_", text)


#: the same rules serve table cells: ``|`` is escaped, the text is one line
md_cell = md_text


def md_code(value: Any) -> str:
    """An inline code span showing ``value`` literally (one line; fenced by enough backticks)."""
    text = one_line(value)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    if text.startswith("`") or text.endswith("`") or (text.startswith(" ") and text.strip()):
        text = f" {text} "
    return f"{fence}{text}{fence}"


def html_text(value: Any) -> str:
    """HTML-escape any value's text, quotes included: safe in element text and quoted attributes."""
    return html.escape(str(value), quote=True)


def html_url(rel: str) -> str:
    """A relative path as a URL (percent-encoded) safe inside a quoted ``src``/``href``."""
    return html_text(quote(rel, safe="/"))


def script_json(obj: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``<``, ``>`` or ``&`` characters."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def mpl_text(value: Any, limit: int = _MPL_MAX) -> str:
    """Text for a matplotlib label: one line, ``$`` escaped (no mathtext), at most ``limit`` chars."""
    text = one_line(value).replace("$", r"\$")
    return text if len(text) <= limit else text[: limit - 3] + "..."
