"""Synthetic data: the smoke plume (images and clips, with masks) and moving digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vqgan.config import DataConfig, ExperimentConfig, LossConfig, ModelConfig
from vqgan.data import build_datasets
from vqgan.data.synthetic import MovingDigits, SmokePlume, SmokeSolver, SmokeVideo, _bilinear, _smoke_params


def test_smoke_images_shapes_range_and_masks():
    ds = SmokePlume(length=4, resolution=32, channels=3, threshold=0.1, seed=3)
    for i in range(len(ds)):
        item = ds[i]
        x, m = item["image"], item["mask"]
        assert x.shape == (3, 32, 32) and m.shape == (1, 32, 32)
        assert x.dtype == torch.float32 and -1.0 <= x.min() and x.max() <= 1.0
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        # There is a plume, it does not fill the frame, and it is brighter than the background.
        assert 0.01 < m.mean() < 0.8
        lum = x.mean(0, keepdim=True)
        assert lum[m > 0].mean() > lum[m == 0].mean() + 0.5
    with pytest.raises(IndexError):
        ds[4]


def test_smoke_deterministic_per_seed_and_index():
    a, b = SmokePlume(3, 24, seed=1), SmokePlume(3, 24, seed=1)
    assert torch.equal(a[2]["image"], b[2]["image"]) and torch.equal(a[2]["mask"], b[2]["mask"])
    assert not torch.equal(a[0]["image"], a[1]["image"])
    assert not torch.equal(a[0]["image"], SmokePlume(3, 24, seed=2)[0]["image"])


def test_smoke_solver_projection_removes_divergence_and_plume_rises():
    n = 32
    solver = SmokeSolver(n, _smoke_params(np.random.default_rng(0), n), jacobi_iters=60)
    tops = []
    for _ in range(40):
        d = solver.step()
        assert np.isfinite(d).all() and d.min() >= 0.0
        tops.append(np.nonzero((d > 0.1).any(1))[0].min())
    # Buoyancy lifts the smoke from its source near the bottom: the top of the plume rises (towards row 0).
    assert tops[0] > n // 2 and tops[-1] < tops[0] - 8
    # The projected velocity has much less divergence than the forces that drive it.
    vx, vy = solver.vx, solver.vy
    div = 0.5 * (vx[1:-1, 2:] - vx[1:-1, :-2] + vy[2:, 1:-1] - vy[:-2, 1:-1])
    speed = np.sqrt(vx**2 + vy**2)[1:-1, 1:-1]
    assert np.abs(div).mean() < 0.2 * speed.mean()


def test_bilinear_matches_numpy_interp():
    field = np.random.default_rng(0).normal(size=(1, 1, 9)).astype(np.float32)
    x = np.linspace(0, 7.9, 23, dtype=np.float32)[None]
    y = np.zeros_like(x)
    got = _bilinear(np.concatenate([field, field]).reshape(1, 2, 9), y, x)[0, 0]
    np.testing.assert_allclose(got, np.interp(x[0], np.arange(9), field[0, 0]), atol=1e-5)


def test_smoke_video_clips_evolve_and_masks_follow():
    ds = SmokeVideo(length=2, resolution=24, frames=4, frame_stride=2, seed=0)
    item = ds[1]
    assert item["image"].shape == (3, 4, 24, 24) and item["mask"].shape == (1, 4, 24, 24)
    frames = item["image"].unbind(1)
    assert all((f1 - f0).abs().mean() > 1e-3 for f0, f1 in zip(frames, frames[1:], strict=False))


def test_moving_digits_videos_and_frames_as_images():
    ds = MovingDigits(length=3, resolution=32, frames=6, num_digits=2, seed=0)
    item = ds[0]
    v = item["image"]
    assert v.shape == (1, 6, 32, 32) and item["label"].shape == (2,)
    assert -1.0 <= v.min() and v.max() <= 1.0 and v.max() > 0.5
    # Digits move: consecutive frames differ, but keep the same amount of ink (no digit leaves the frame).
    ink = (v + 1).sum(dim=(0, 2, 3))
    assert ((v[:, 1:] - v[:, :-1]).abs().sum(dim=(0, 2, 3)) > 0).all()
    assert (ink.max() - ink.min()) / ink.mean() < 0.35
    flat = MovingDigits(length=3, resolution=32, frames=6, frames_as_images=True, seed=0)
    assert len(flat) == 18
    assert torch.equal(flat[6 + 4]["image"], ds[1]["image"][:, 4])


@pytest.mark.parametrize("kind", ["smoke", "smoke_video", "moving_digits"])
def test_synthetic_kinds_are_registered(kind):
    cfg = DataConfig(kind=kind, resolution=16, channels=1, frames=3, builtin_train_crops=5, val_size=2)
    train, val = build_datasets(cfg, seed=0)
    assert len(train) == 5 and len(val) == 2
    x = train[0]["image"]
    assert x.shape == ((1, 16, 16) if kind == "smoke" else (1, 3, 16, 16))
    # Validation items come from other seeds than training items.
    assert not torch.equal(val[0]["image"], x)


def test_masked_l2_accepts_smoke_masks():
    from vqgan.losses import VQGANLoss

    cfg = ExperimentConfig(
        model=ModelConfig(resolution=16, in_channels=1),
        loss=LossConfig(reconstruction="masked_l2", perceptual="none"),
        data=DataConfig(kind="smoke", resolution=16, channels=1, builtin_train_crops=2, val_size=1),
    )
    cfg.validate()  # no mask_threshold needed: the smoke dataset provides the masks
    train, _ = build_datasets(cfg.data, seed=0)
    item = train[0]
    x, mask = item["image"][None], item["mask"][None]
    assert 0 < mask.sum() < mask.numel()  # both plume and background pixels
    rec = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    loss = VQGANLoss(cfg.loss).nll(x, rec, mask).logs["rec"]
    # By hand: weight 1 on the plume, 0.1 on the background, normalised by the sum of the weights.
    w = torch.where(mask > 0, 1.0, 0.1)
    expected = (w * (rec - x) ** 2).sum() / w.sum()
    torch.testing.assert_close(loss, expected)
    # The mask matters: the plain mean differs, and an error on background pixels only costs 0.1 of the same on
    # the plume.
    assert abs(loss.item() - ((rec - x) ** 2).mean().item()) > 1e-3
    bg = VQGANLoss(cfg.loss).nll(x, x + (mask == 0), mask).logs["rec"]
    fg = VQGANLoss(cfg.loss).nll(x, x + (mask > 0), mask).logs["rec"]
    n_fg, n_bg = mask.sum(), (mask == 0).sum()
    torch.testing.assert_close(bg, 0.1 * n_bg / (n_fg + 0.1 * n_bg))
    torch.testing.assert_close(fg, n_fg / (n_fg + 0.1 * n_bg))
