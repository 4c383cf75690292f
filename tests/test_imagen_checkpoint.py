"""Imagen stage checkpoints: round trip, strict loading, sha256, config serialisation."""

from __future__ import annotations

import json

import pytest
import torch

from evalkit.errors import InputError, MissingWeightsError
from evalkit.hashing import sha256_file
from evalkit.imagen.cascade import Cascade
from evalkit.imagen.checkpoint import (
    CheckpointMismatchError,
    load_stage,
    read_stage_config,
    save_stage,
)
from evalkit.imagen.configs import StageConfig
from evalkit.imagen.presets import PRESETS, preset
from evalkit.imagen.testing import micro_base, micro_sr, micro_stage
from evalkit.imagen.text_encoders import TinyRandomEncoder


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_save_then_load_reproduces_samples_bit_for_bit(tmp_path):
    stages = [micro_stage(micro_base(), 0), micro_stage(micro_sr(), 1)]
    before = Cascade(TinyRandomEncoder(), stages).sample(["a red cube", "a cat NOT fog"], [4, 5])
    paths = [
        save_stage(tmp_path / f"{s.config.name}.safetensors", s.config, s.model) for s in stages
    ]
    loaded = [load_stage(p, sha256=sha256_file(p)) for p in paths]
    assert [s.config for s in loaded] == [s.config for s in stages]
    after = Cascade(TinyRandomEncoder(), loaded).sample(["a red cube", "a cat NOT fog"], [4, 5])
    assert torch.equal(before.images, after.images)
    sidecar = json.loads((tmp_path / "base.json").read_text())
    assert StageConfig.from_dict(sidecar["config"]) == stages[0].config


def test_mismatched_config_is_refused_listing_keys(tmp_path):
    stage = micro_stage(micro_base(), 0)
    path = save_stage(tmp_path / "base.safetensors", stage.config, stage.model)
    wider = stage.config.replace(
        model=stage.config.model.__class__(
            **{**stage.config.model.to_dict(), "channels": 12, "channel_mult": (1, 2)}
        )
    )
    with pytest.raises(CheckpointMismatchError, match="mis-shaped") as err:
        load_stage(path, config=wider)
    assert "conv_in.weight" in str(err.value)
    deeper = stage.config.replace(
        model=stage.config.model.__class__(**{**stage.config.model.to_dict(), "num_res_blocks": 2})
    )
    with pytest.raises(CheckpointMismatchError, match=r"missing \(\d+\)"):
        load_stage(path, config=deeper)


def test_checkpoint_with_extra_tensors_is_refused(tmp_path):
    stage = micro_stage(micro_base(), 0)
    state = dict(stage.model.state_dict())
    state["extra.weight"] = torch.zeros(3)
    path = save_stage(tmp_path / "base.safetensors", stage.config, state)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected \(1\): extra.weight"):
        load_stage(path)


def test_wrong_sha256_and_missing_file_are_refused(tmp_path):
    stage = micro_stage(micro_base(), 0)
    path = save_stage(tmp_path / "base.safetensors", stage.config, stage.model)
    with pytest.raises(InputError, match="sha256"):
        load_stage(path, sha256="0" * 64)
    with pytest.raises(MissingWeightsError, match="does not exist"):
        load_stage(tmp_path / "nope.safetensors")


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(InputError, match="not an evalkit Imagen stage checkpoint"):
        read_stage_config(tmp_path / "x.safetensors")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_config_round_trips_through_json(name):
    cfg = preset(name)
    assert StageConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_config_with_unknown_key_is_refused():
    d = micro_base().to_dict()
    d["model"]["channelz"] = 3
    with pytest.raises(InputError, match="channelz"):
        StageConfig.from_dict(d)
