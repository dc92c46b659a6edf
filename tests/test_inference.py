"""Whole-image reconstruction in windows of the training size (``vqgan reconstruct --full-size``)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from vqgan.inference import reconstruct_files, reconstruct_tiled
from vqgan.registry import create_model


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return create_model("test-taming").eval()


class Affine(torch.nn.Module):
    """A stand-in tokenizer whose reconstruction is ``2 x + 0.1``: blending its windows must give that exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return SimpleNamespace(reconstruction=2 * x + 0.1)


@pytest.mark.parametrize("size", [(16, 16), (37, 50), (9, 70)])
def test_tiled_windows_blend_to_the_per_window_result(size):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size)
    model = Affine()
    out = reconstruct_tiled(model, x, tile=16, batch_size=5)
    assert out.shape == x.shape
    torch.testing.assert_close(out, 2 * x + 0.1)
    # Every window the model saw has the training size; the windows overlap by half a tile.
    assert {s[1:] for s in model.calls} == {(3, 16, 16)}
    h, w = size
    n = [max(0, -(-(d - 16) // 8)) + 1 for d in (h, w)]
    assert sum(s[0] for s in model.calls) == 2 * n[0] * n[1]


def test_a_window_sized_image_is_one_plain_pass(tiny_model):
    torch.manual_seed(0)
    r = tiny_model.config.resolution
    x = torch.rand(1, tiny_model.config.in_channels, r, r) * 2 - 1
    tiny_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reconstruct_tiled(tiny_model, x, r), tiny_model(x).reconstruction)


def test_full_size_reconstruction_is_tiled_unless_asked_not_to(tmp_path, tiny_model):
    r, c = tiny_model.config.resolution, tiny_model.config.in_channels
    rng = np.random.default_rng(0)
    mode = "L" if c == 1 else "RGB"
    shape = (3 * r, 2 * r) if c == 1 else (3 * r, 2 * r, 3)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(tmp_path / "big.png")
    tiled = reconstruct_files(tiny_model, tmp_path / "big.png", tmp_path / "a", full_size=True)
    whole = reconstruct_files(tiny_model, tmp_path / "big.png", tmp_path / "b", full_size=True, tile=False)
    assert tiled.records[0]["size"] == whole.records[0]["size"] == [3 * r, 2 * r]
    a = np.asarray(Image.open(tmp_path / "a" / "big_rec.png"), dtype=np.float32)
    b = np.asarray(Image.open(tmp_path / "b" / "big_rec.png"), dtype=np.float32)
    assert a.shape == b.shape and np.abs(a - b).mean() > 0.5  # GroupNorm over the whole image differs


def test_tiled_windows_keep_the_decoders_channel_count():
    """A decoder with other channels than its input (``model.out_channels``) is blended per output channel."""

    class ToGrey(torch.nn.Module):
        def forward(self, x):
            return SimpleNamespace(reconstruction=x.mean(1, keepdim=True) - 0.2)

    x = torch.randn(1, 3, 30, 41)
    torch.testing.assert_close(reconstruct_tiled(ToGrey(), x, tile=8), x.mean(1, keepdim=True) - 0.2)
