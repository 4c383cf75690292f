"""Imagen training on tiny synthetic data: the loss falls, resume is exact, data adapters work."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from evalkit.errors import InputError, UsageError
from evalkit.imagen.checkpoint import load_stage
from evalkit.imagen.data import ImageFolder, JsonlManifest, to_model_image
from evalkit.imagen.testing import micro_base, micro_sr
from evalkit.imagen.text_encoders import TinyRandomEncoder
from evalkit.imagen.trainer import TrainConfig, evaluate_loss, latest_checkpoint, train_stage
from evalkit.imagen.unet import build_model

COLOURS = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "yellow": (230, 220, 30),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def squares(n: int, size: int = 16, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    """Coloured squares on black at random places, captioned with their colour."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    out = []
    for i in range(n):
        name = names[i % len(names)]
        img = np.zeros((size, size, 3), dtype=np.uint8)
        side = int(rng.integers(size // 3, size // 2 + 1))
        y, x = rng.integers(0, size - side + 1, size=2)
        img[y : y + side, x : x + side] = COLOURS[name]
        out.append((img, f"a {name} square"))
    return out


def _fixed_batch(stage, data, encoder):
    images = torch.stack([to_model_image(im, stage.resolution) for im, _ in data])
    return images, encoder.encode([c for _, c in data])


def test_short_cpu_training_lowers_the_loss(tmp_path):
    stage = micro_base()
    data = squares(32)
    cfg = TrainConfig(
        stage=stage,
        steps=60,
        batch_size=8,
        lr=3e-3,
        warmup_steps=5,
        ema_decay=0.9,
        checkpoint_every=1000,
        log_every=1000,
        seed=0,
    )
    encoder = TinyRandomEncoder()
    images, text = _fixed_batch(stage, data[:8], encoder)
    torch.manual_seed(cfg.seed)
    before = evaluate_loss(build_model(stage.model), stage, images, text, seed=123)
    result = train_stage(cfg, data, tmp_path, text_encoder=encoder, progress=False)
    assert result.step == 60 and len(result.losses) == 60
    trained = load_stage(result.checkpoint)
    after = evaluate_loss(trained.model, stage, images, text, seed=123)
    print(f"fixed-batch loss {before:.3f} -> {after:.3f}")
    assert after < 0.7 * before, (before, after)
    assert np.mean(result.losses[-10:]) < 0.8 * np.mean(result.losses[:5])
    assert latest_checkpoint(tmp_path).name == "step-00000060"


def test_resume_from_latest_checkpoint_matches_uninterrupted_run(tmp_path):
    stage = micro_base()
    data = squares(12, seed=1)
    cfg = TrainConfig(
        stage=stage,
        steps=6,
        batch_size=4,
        lr=1e-3,
        warmup_steps=2,
        checkpoint_every=3,
        log_every=100,
    )
    full = train_stage(
        cfg, data, tmp_path / "full", text_encoder=TinyRandomEncoder(), progress=False
    )
    first = train_stage(
        cfg,
        data,
        tmp_path / "split",
        text_encoder=TinyRandomEncoder(),
        progress=False,
        stop_after=3,
    )
    assert first.step == 3
    second = train_stage(
        cfg, data, tmp_path / "split", text_encoder=TinyRandomEncoder(), progress=False
    )
    assert second.resumed_from == 3 and second.step == 6
    assert second.losses == full.losses[3:]
    a, b = (
        load_stage(full.checkpoint).model.state_dict(),
        load_stage(second.checkpoint).model.state_dict(),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cosine_lr_schedule_warms_up_then_decays_to_the_floor_and_constant_stays_flat():
    cosine = TrainConfig(
        stage=micro_base(), steps=110, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1
    )
    factors = [cosine.lr_factor(s) for s in range(111)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[60] == pytest.approx(0.55)
    assert factors[110] == pytest.approx(0.1) and cosine.lr_factor(500) == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    constant = TrainConfig(stage=micro_base(), steps=110, warmup_steps=10)
    assert [constant.lr_factor(s) for s in (9, 10, 60, 110)] == [1.0, 1.0, 1.0, 1.0]
    with pytest.raises(UsageError, match="lr_schedule"):
        TrainConfig(stage=micro_base(), lr_schedule="step")
    with pytest.raises(UsageError, match="min_lr_ratio"):
        TrainConfig(stage=micro_base(), lr_schedule="cosine", min_lr_ratio=1.5)


def test_cosine_schedule_drives_the_optimizer_learning_rate(tmp_path):
    cfg = TrainConfig(
        stage=micro_base(), steps=4, batch_size=2, lr=1e-3, warmup_steps=1,
        lr_schedule="cosine", min_lr_ratio=0.0, checkpoint_every=4, log_every=100,
    )  # fmt: skip
    train_stage(cfg, squares(4, seed=2), tmp_path, text_encoder=TinyRandomEncoder(), progress=False)
    state = torch.load(
        latest_checkpoint(tmp_path) / "state.pt", map_location="cpu", weights_only=True
    )
    assert state["scheduler"]["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)


def test_super_resolution_stage_trains_on_downsampled_pairs(tmp_path):
    stage = micro_sr()
    cfg = TrainConfig(
        stage=stage, steps=2, batch_size=2, lr=1e-3, warmup_steps=1, checkpoint_every=100
    )
    result = train_stage(
        cfg, squares(4, size=32), tmp_path, text_encoder=TinyRandomEncoder(), progress=False
    )
    assert result.step == 2 and all(np.isfinite(result.losses))
    assert load_stage(result.checkpoint).config == stage


def test_streaming_iterable_data_trains_and_stops_when_dry(tmp_path):
    stage = micro_base()
    cfg = TrainConfig(stage=stage, steps=10, batch_size=2, checkpoint_every=100)
    result = train_stage(
        cfg, iter(squares(4)), tmp_path, text_encoder=TinyRandomEncoder(), progress=False
    )
    assert result.step == 2


def _write_png(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)


def test_image_folder_and_jsonl_manifest_adapters(tmp_path):
    data = squares(3)
    for i, (img, cap) in enumerate(data):
        _write_png(tmp_path / f"{i}.png", img)
        (tmp_path / f"{i}.txt").write_text(cap + "\n")
    folder = ImageFolder(tmp_path)
    assert len(folder) == 3 and folder[1][1] == data[1][1]
    assert np.array_equal(folder[0][0], data[0][0])
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "\n".join(json.dumps({"image": f"{i}.png", "caption": c}) for i, (_, c) in enumerate(data))
    )
    rows = list(JsonlManifest(manifest))
    assert [c for _, c in rows] == [c for _, c in data]
    (tmp_path / "2.txt").unlink()
    with pytest.raises(InputError, match="no caption file"):
        ImageFolder(tmp_path)


def test_to_model_image_accepts_uint8_hwc_chw_and_float():
    img = squares(1, size=20)[0][0]
    a = to_model_image(img, 16)
    b = to_model_image(torch.from_numpy(img).permute(2, 0, 1).contiguous(), 16)
    c = to_model_image(torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1, 16)
    assert a.shape == (3, 16, 16) and torch.equal(a, b) and torch.allclose(a, c, atol=1e-5)
    assert a.min() >= -1 and a.max() <= 1


DDP_SCRIPT = """
import sys
import numpy as np
import torch
torch.set_num_threads(1)
from evalkit.imagen.testing import micro_base
from evalkit.imagen.text_encoders import TinyRandomEncoder
from evalkit.imagen.trainer import TrainConfig, train_stage
data = [(np.full((16, 16, 3), 30 * i, dtype=np.uint8), f"colour {i}") for i in range(8)]
cfg = TrainConfig(stage=micro_base(), steps=2, batch_size=2, checkpoint_every=1, log_every=1)
r = train_stage(cfg, data, sys.argv[1], text_encoder=TinyRandomEncoder())
print(f"RESULT {r.step} {r.checkpoint is not None}", flush=True)  # one write per rank
"""


@pytest.mark.slow
@pytest.mark.torchrun
def test_torchrun_two_processes_train_data_parallel_and_rank0_writes(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(tmp_path / "out"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the ranks share stdout: each prints its record in one write; match records, not lines
    results = sorted(re.findall(r"RESULT \d+ (?:True|False)", proc.stdout))
    assert results == ["RESULT 2 False", "RESULT 2 True"]  # both ranks ran; only rank 0 exported
    assert (tmp_path / "out" / "base.safetensors").is_file()
    assert latest_checkpoint(tmp_path / "out").name == "step-00000002"


def test_datasets_dataset_adapter_yields_image_caption_pairs():
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from evalkit.imagen.data import HFDataset

    data = squares(3)
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(im) for im, _ in data], "text": [c for _, c in data]},
        features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}),
    )
    pairs = HFDataset(ds)
    assert len(pairs) == 3 and pairs[2][1] == data[2][1]
    assert torch.equal(to_model_image(pairs[0][0], 16), to_model_image(data[0][0], 16))
    with pytest.raises(InputError, match="no column 'caption'"):
        HFDataset(ds, caption_column="caption")
