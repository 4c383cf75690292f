"""Hostile strings from data come out inert in Markdown, HTML and matplotlib labels."""

from __future__ import annotations

import re

import pytest

from evalkit.textsafe import (
    html_text,
    html_url,
    md_cell,
    md_code,
    md_text,
    mpl_text,
    one_line,
    script_json,
)

HOSTILE = [
    "a|b",
    "fish & chips",
    "<script>alert(1)</script>",
    "line1\r\nline2\rline3\nline4",
    "`rm -rf /`",
    "**bold** and *it*",
    "_under_ ~~gone~~",
    "[click](https://example.invalid) ![x](y)",
    "back\\slash \\| \\*",
]


def _unescaped(text: str, char: str) -> list[int]:
    """Positions of ``char`` not preceded by an odd number of backslashes."""
    out = []
    for m in re.finditer(re.escape(char), text):
        run = len(text[: m.start()]) - len(text[: m.start()].rstrip("\\"))
        if run % 2 == 0:
            out.append(m.start())
    return out


@pytest.mark.parametrize("value", HOSTILE)
def test_md_text_is_one_line_with_no_active_markdown_or_html(value):
    out = md_text(value)
    assert "\n" not in out and "\r" not in out
    assert "<" not in out and ">" not in out
    assert not re.search(r"&(?!(amp|lt|gt);)", out)  # every & starts an entity we wrote
    for char in "|`*~[]":
        assert not _unescaped(out, char), (char, out)
    assert md_cell is md_text


def test_md_text_examples():
    assert md_text("a|b") == "a\\|b"
    assert md_text("fish & chips") == "fish &amp; chips"
    assert md_text("<script>x</script>") == "&lt;script&gt;x&lt;/script&gt;"
    assert md_text("a\r\nb") == "a b"
    assert md_text("`x`") == "\\`x\\`"
    assert md_text("*x*") == "\\*x\\*"
    assert md_text("_x_") == "\\_x\\_"
    assert md_text("clip_score") == "clip_score"  # intraword underscores stay readable
    assert md_text("a\\*b") == "a\\\\\\*b"


@pytest.mark.parametrize("value", ["abc", "a`b", "``x``", "`", " x", "a\r\nb|c"])
def test_md_code_fences_longer_than_any_backtick_run(value):
    out = md_code(value)
    fence = re.match(r"`+", out).group(0)
    inner = out[len(fence) : -len(fence)]
    assert out.endswith(fence) and "\n" not in out and "\r" not in out
    assert all(len(run) < len(fence) for run in re.findall(r"`+", inner))
    assert inner.strip() == one_line(value).strip()


@pytest.mark.parametrize("value", HOSTILE + ["\"quoted\" 'single'"])
def test_html_text_is_safe_in_text_and_attributes(value):
    out = html_text(value)
    assert "<" not in out and ">" not in out and '"' not in out and "'" not in out
    assert not re.search(r"&(?!(amp|lt|gt|quot|#x27);)", out)


def test_mpl_text_is_one_line_without_mathtext_and_bounded():
    assert mpl_text("$x^2$\r\nnext") == r"\$x^2\$ next"
    assert len(mpl_text("x" * 500)) == 60 and mpl_text("x" * 500).endswith("...")
    assert mpl_text("y" * 100, limit=120) == "y" * 100


def test_html_url_and_script_json_cannot_break_out():
    assert html_url("images/a b\"'<x>.png") == "images/a%20b%22%27%3Cx%3E.png"
    block = script_json({"k": "</script><script>alert(1)</script>&amp;"})
    assert "<" not in block and ">" not in block and "&" not in block
    import json

    assert json.loads(block)["k"] == "</script><script>alert(1)</script>&amp;"
