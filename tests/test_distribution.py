"""Set distances that need no download (vqgan.metrics.distribution): exact values in 1-D, invariants, and the
ranking the prior benchmarks rely on (held-out real images closer than noise and than blurred copies)."""

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import wasserstein_distance

from vqgan.metrics.distribution import (
    clip_set_distances,
    colour_histogram_distance,
    image_set_distances,
    sliced_wasserstein,
)


def test_sliced_wasserstein_in_one_dimension_is_the_wasserstein_distance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 1, generator=g)
    y = torch.randn(300, 1, generator=g) * 2 + 1
    # In 1-D every unit direction is +1 or -1, so the sliced distance is W1 itself.
    expected = wasserstein_distance(x[:, 0].numpy(), y[:, 0].numpy())
    assert float(sliced_wasserstein(x, y, num_projections=16)) == pytest.approx(expected, rel=1e-5)


def test_sliced_wasserstein_is_zero_on_equal_sets_symmetric_and_seeded():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 10, generator=g), torch.randn(50, 10, generator=g) + 0.5
    assert float(sliced_wasserstein(x, x[torch.randperm(64)])) == pytest.approx(0.0, abs=1e-6)
    assert float(sliced_wasserstein(x, y)) == pytest.approx(float(sliced_wasserstein(y, x)), rel=1e-5)
    assert float(sliced_wasserstein(x, y, seed=3)) == float(sliced_wasserstein(x, y, seed=3))
    # A shift by a along every coordinate moves every projection by a * sum(direction): strictly positive distance.
    assert float(sliced_wasserstein(x, x + 1.0)) > 0.5
    with pytest.raises(ValueError, match="different sizes"):
        sliced_wasserstein(x, torch.randn(5, 3))


def test_colour_histogram_distance_is_a_per_channel_shift():
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    shifted = x.clone()
    shifted[:, 0] += 0.3  # only the red channel moves, by 0.3: W1 0.3 on one channel of three
    assert float(colour_histogram_distance(x, shifted)) == pytest.approx(0.1, rel=1e-4)
    # Colour ignores layout: a spatial shuffle of the same values has distance 0.
    perm = torch.randperm(16 * 16)
    shuffled = x.flatten(2)[:, :, perm].view_as(x)
    assert float(colour_histogram_distance(x, shuffled)) == pytest.approx(0.0, abs=1e-6)


def _photo_crops(n: int, seed: int) -> torch.Tensor:
    from vqgan.data.builtin import TRAIN_PHOTOS, load_photo
    from vqgan.data.transforms import to_tensor

    g = torch.Generator().manual_seed(seed)
    crops = []
    photos = [to_tensor(load_photo(name, scale=0.5)) for name in TRAIN_PHOTOS]
    for i in range(n):
        img = photos[i % len(photos)]
        y = int(torch.randint(0, img.shape[1] - 64, (1,), generator=g))
        x = int(torch.randint(0, img.shape[2] - 64, (1,), generator=g))
        crops.append(img[:, y : y + 64, x : x + 64])
    return torch.stack(crops)


def test_held_out_real_images_rank_above_noise_and_blurred_copies():
    reference, held_out = _photo_crops(64, seed=0), _photo_crops(64, seed=1)
    noise = torch.rand_like(held_out) * 2 - 1
    blurred = F.avg_pool2d(held_out, 5, stride=1, padding=2, count_include_pad=False)
    real = image_set_distances(held_out, reference)
    for name, fake in (("noise", noise), ("blurred", blurred)):
        worse = image_set_distances(fake, reference)
        assert real["swd_features"] < worse["swd_features"], name
    assert real["swd_pixels"] < image_set_distances(noise, reference)["swd_pixels"]
    assert real["colour"] < image_set_distances(noise, reference)["colour"]


def test_clip_distances_see_motion():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(16, 1, 1, 16, 16, generator=g) * 2 - 1
    moving = torch.cat([base.roll(s, dims=-1) for s in range(4)], dim=2)  # content shifts one pixel per frame
    still = base.expand(-1, -1, 4, -1, -1).clone()  # the same frames' content, no motion
    d = clip_set_distances(still, moving)
    assert d["swd_motion"] > 0.05
    assert clip_set_distances(moving, moving)["swd_motion"] == pytest.approx(0.0, abs=1e-6)
