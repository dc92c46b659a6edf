"""The colour augmentation of the built-in training crops (data.builtin_hue / builtin_saturation): it changes the
hue of training crops, reproducibly, and never touches validation crops."""

from __future__ import annotations

import pytest
import torch

from vqgan.config import DataConfig
from vqgan.data import build_datasets
from vqgan.data.transforms import jitter_colour, rotate_hue
from vqgan.registry import get_preset


def _hue(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel hue in [0, 1) of an RGB image in [-1, 1] (the HSV formula, written out as the reference)."""
    r, g, b = ((x + 1) / 2).unbind(0)
    mx, mn = torch.max(torch.stack([r, g, b]), 0).values, torch.min(torch.stack([r, g, b]), 0).values
    d = (mx - mn).clamp_min(1e-6)
    h = torch.where(mx == r, ((g - b) / d) % 6, torch.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    return h / 6


def test_rotate_hue_turns_red_to_green_and_a_full_turn_is_the_identity():
    red = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1).expand(3, 4, 4)
    green = rotate_hue(red, 1 / 3)
    assert torch.allclose(green, torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand(3, 4, 4), atol=1e-5)
    assert torch.allclose(rotate_hue(red, 1 / 3 + 1.0), green, atol=1e-5)  # shifts wrap around the circle
    x = torch.rand(3, 8, 8) * 2 - 1
    assert torch.allclose(rotate_hue(x, 0.0), x, atol=1e-5)
    grey = torch.full((1, 8, 8), 0.3)
    assert torch.equal(jitter_colour(grey, 0.5, 0.5, torch.Generator().manual_seed(0)), grey)


def test_training_crops_change_hue_validation_crops_do_not():
    cfg = DataConfig(kind="builtin", resolution=16, builtin_train_crops=32, val_size=16)
    plain_train, plain_val = build_datasets(cfg, seed=3)
    cfg.builtin_hue, cfg.builtin_saturation = 0.5, 0.3
    train, val = build_datasets(cfg, seed=3)
    # Validation: the same crops, bit for bit.
    for i in range(len(val)):
        assert torch.equal(val[i]["image"], plain_val[i]["image"])
    # Training: the same crop positions (labels) and lightness, different hues; reproducible.
    hue_shifts, changed = [], 0
    for i in range(len(train)):
        a, b = plain_train[i], train[i]
        assert int(a["label"]) == int(b["label"]) and torch.equal(b["image"], train[i]["image"])
        changed += not torch.allclose(a["image"], b["image"], atol=1e-3)
        coloured = (a["image"].max(0).values - a["image"].min(0).values) > 0.3  # pixels with a definite hue
        if coloured.sum() > 20:
            d = (_hue(b["image"]) - _hue(a["image"]))[coloured]
            hue_shifts.append(float(torch.remainder(d + 0.5, 1.0).sub(0.5).abs().median()))
    assert changed == len(train)
    assert len(hue_shifts) >= 5 and max(hue_shifts) > 0.2  # rotations of a fifth of the circle and more happen
    assert all(b["image"].min() >= -1 and b["image"].max() <= 1 for b in (train[i] for i in range(4)))


def test_the_quickstart_uses_it_and_bad_values_are_refused():
    assert get_preset("quickstart").data.builtin_hue == 0.5
    with pytest.raises(ValueError, match="hue"):
        build_datasets(DataConfig(kind="builtin", resolution=16, builtin_hue=0.7))
