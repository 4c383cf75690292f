"""The plotting helper: reproducible bytes, atomic files, and every plotter uses it."""

from __future__ import annotations

import pytest

from evalkit.plotting import new_figure, render_figure, safe_stem, save_figure


def _figure(label: str = "fid") -> object:
    fig = new_figure(4, 3)
    ax = fig.add_subplot()
    ax.bar([0, 1, 2], [3, 1, 2], label=label)
    ax.set_title("same figure")
    ax.legend()
    return fig


def test_saving_the_same_figure_twice_gives_identical_bytes(tmp_path):
    first = save_figure(_figure(), tmp_path / "a" / "plot")
    second = save_figure(_figure(), tmp_path / "b" / "plot")
    assert [p.name for p in first] == ["plot.png", "plot.svg"]
    for p, q in zip(first, second, strict=True):
        assert p.read_bytes() == q.read_bytes(), p.name
    svg = first[1].read_text()
    assert "<dc:date>" not in svg and "Matplotlib v" not in svg


def test_a_failing_save_leaves_no_file(tmp_path, monkeypatch):
    fig = _figure()
    real = fig.savefig

    def fail_on_svg(buf, *, format, **kwargs):  # noqa: A002 - matplotlib's keyword
        if format == "svg":
            buf.write(b"<svg partial")
            raise RuntimeError("disk full")
        return real(buf, format=format, **kwargs)

    monkeypatch.setattr(fig, "savefig", fail_on_svg)
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, tmp_path / "plot")
    assert list(tmp_path.iterdir()) == []  # not even the PNG rendered before the failure


def test_a_failing_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")

    import evalkit.atomic as atomic

    def broken_fsync(fd):
        raise OSError("no space")

    monkeypatch.setattr(atomic.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="no space"):
        save_figure(_figure(), tmp_path / "plot", formats=("png",))
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]


def test_render_figure_refuses_unknown_formats_and_safe_stem_cleans_names():
    with pytest.raises(ValueError, match="format 'jpg'"):
        render_figure(_figure(), "jpg")
    assert safe_stem("fid/../x y") == "fid_.._x_y"
    assert safe_stem("...") == "plot"


def test_human_preference_plots_are_reproducible_and_labels_are_literal(tmp_path):
    from evalkit.human.plots import Bar, preference_bars

    bars = [Bar("$x$ <b>", 0.5, 0.2, 0.3, (0.4, 0.6), (0.2, 0.4), 10)]
    a = preference_bars(bars, "model $A$", "B", "A vs B", tmp_path / "a" / "pair")
    b = preference_bars(bars, "model $A$", "B", "A vs B", tmp_path / "b" / "pair")
    assert [p.name for p in a] == ["pair.png", "pair.svg"]
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(a, b, strict=True))
    svg = a[1].read_text()
    assert "model $A$" in svg and "$x$ &lt;b&gt;" in svg
