"""Registries: lazy built-ins, typo suggestions, entry-point plugins and model cards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from evalkit import registry as reg
from evalkit.cards import load_card
from evalkit.errors import InputError, UsageError
from evalkit.registry import MODELS, Registry


def test_importing_the_registry_does_not_import_heavy_backends():
    code = "import sys, evalkit.registry, evalkit.cli; print(sorted(m for m in ('torch','open_clip','torch_fidelity') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_name_suggests_the_nearest_names():
    with pytest.raises(UsageError) as err:
        MODELS.get("refrence")
    assert "Did you mean: reference" in str(err.value)
    assert "evalkit list models" in str(err.value)


def test_invalid_and_duplicate_names_are_refused():
    r = Registry("things", "evalkit.things")
    r.register("good-name", "os:getcwd")
    with pytest.raises(ValueError, match="already registered"):
        r.register("good-name", "os:getcwd")
    for bad in ("Bad Name", "../x", "", "a/b"):
        with pytest.raises(ValueError, match="invalid"):
            r.register(bad, "os:getcwd")
    with pytest.raises(ValueError, match="module:attr"):
        r.register("lazy", "os.getcwd")


def test_lazy_entry_imports_its_module_only_on_get():
    r = Registry("things", "evalkit.things")
    r.register("cwd", "os.path:join")
    assert r.get("cwd") is __import__("os").path.join


def test_entry_point_plugins_are_listed_and_loaded(monkeypatch):
    fake = SimpleNamespace(name="plugin-model", value="os.path:basename")
    monkeypatch.setattr(
        reg, "entry_points", lambda group: [fake] if group == "evalkit.plugins-test" else []
    )
    r = Registry("models", "evalkit.plugins-test")
    assert r.names() == ["plugin-model"]
    assert r.get("plugin-model") is __import__("os").path.basename
    assert "entry point" in r.entry("plugin-model").source


def write_card(folder: Path, text: str, name: str = "card.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_model_card_declares_a_model_without_code(tmp_path, monkeypatch):
    write_card(
        tmp_path / "cards",
        'name = "toy-big"\nadapter = "toy"\ndescription = "toy at 128"\n'
        "[sampling]\nnum_blobs = 5\n[options]\nnative_resolution = 128\n",
    )
    monkeypatch.setenv("EVALKIT_MODEL_PATH", str(tmp_path / "cards"))
    assert "toy-big" in MODELS.names()
    from evalkit.generators.base import GeneratorContext

    context = GeneratorContext(resolution=32)
    generator = MODELS.get("toy-big")({"noise": 0.0}, context)
    assert (
        generator.native_resolution == 128 and generator.num_blobs == 5 and generator.noise == 0.0
    )
    assert context.extra["card"].name == "toy-big"


def test_card_weights_paths_resolve_relative_to_the_card(tmp_path):
    path = write_card(
        tmp_path,
        'name = "m"\nadapter = "imagen"\n[weights.base]\npath = "ckpt/base.safetensors"\n'
        f'sha256 = "{"a" * 64}"\n',
    )
    card = load_card(path)
    assert card.weights["base"].path == (tmp_path / "ckpt/base.safetensors").resolve()
    assert card.weights["base"].sha256 == "a" * 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('adapter = "toy"\n', "missing required field 'name'"),
        ('name = "x"\n', "missing required field 'adapter'"),
        ('name = "x"\nadapter = "toy"\n[weights.w]\nsha256 = "abc"\n', "needs 'path' or 'hub_id'"),
        ('name = "x"\nadapter = "toy"\n[weights.w]\npath = "a"\nsha256 = "abc"\n', "64 hex"),
        ("name = [unclosed\n", "cannot be read as TOML"),
    ],
)
def test_malformed_model_cards_name_the_file_and_field(tmp_path, text, message):
    path = write_card(tmp_path, text)
    with pytest.raises(InputError, match=message) as err:
        load_card(path)
    assert str(path) in str(err.value)


def test_broken_card_is_listed_and_fails_clearly_on_use(tmp_path, monkeypatch):
    write_card(tmp_path, 'adapter = "toy"\n', name="broken.toml")
    monkeypatch.setenv("EVALKIT_MODEL_PATH", str(tmp_path))
    assert "BROKEN CARD" in MODELS.entry("broken").description
    with pytest.raises(InputError, match="missing required field"):
        MODELS.get("broken")({}, None)
