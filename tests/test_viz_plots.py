"""Every picture of ``vqgan visualize`` on a tiny model, checked for content (not blank) and size; the latent
helpers checked against direct computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vqgan.data.builtin import BuiltinPhotos
from vqgan.models import VQModel
from vqgan.registry import get_preset
from vqgan.viz import plots
from vqgan.viz.codebook import decode_code_patches, plot_token_map, save_codebook_atlas
from vqgan.viz.grids import save_comparison
from vqgan.viz.latent import (
    collect_latents,
    interpolate,
    latent_statistics,
    plot_latent_statistics,
    plot_projection,
    save_interpolation,
)
from vqgan.viz.visualize import visualize_model


def check_png(path, size=None, min_std: float = 8.0) -> np.ndarray:
    """The picture exists, has the expected ``(width, height)`` and is not blank (pixel std on 0..255)."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float64)
        if size is not None:
            assert im.size == size, f"{path}: {im.size} != {size}"
    assert arr.std() > min_std, f"{path} looks blank (std {arr.std():.2f})"
    return arr


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VQModel(get_preset("test-taming").model).eval()


@pytest.fixture(scope="module")
def images():
    ds = BuiltinPhotos("val", resolution=16, length=12)
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


@pytest.fixture(scope="module")
def diagnostics():
    """Arrays in the layout of RUN_DIR/diagnostics.npz: a few codes that get gradient and grow, the rest idle."""
    rng = np.random.default_rng(0)
    t, k = 6, 32
    active = np.zeros(k, bool)
    active[:6] = True
    grads = np.where(active, rng.random((t, k)) + 0.1, 0.0).astype(np.float32)
    norms = (1 + np.cumsum(grads, 0) * 0.3 + 0.05 * rng.random((t, k))).astype(np.float32)
    counts = np.where(active, rng.integers(5, 50, (t, k)), 0).astype(np.float32)
    return {
        "step": np.arange(1, t + 1, dtype=np.int64) * 50,
        "usage": (counts > 0).mean(1),
        "perplexity": np.full(t, 5.5),
        "dead_codes": np.full(t, 26, dtype=np.int64),
        "restarts": np.array([0, 3, 0, 1, 0, 0], dtype=np.int64),
        "code_norms": norms,
        "code_grad_norms": grads,
        "code_counts": counts,
    }


def test_diagnostics_plots(diagnostics, tmp_path):
    check_png(plots.plot_usage_over_time(diagnostics, tmp_path / "u.png"), (1000, 360))
    check_png(plots.plot_code_grad_norms(diagnostics, tmp_path / "g.png"), (1000, 360))
    check_png(plots.plot_grad_heatmap(diagnostics, tmp_path / "h.png"), (800, 500))
    check_png(plots.plot_code_norms(diagnostics, tmp_path / "n.png"), (1000, 360))
    check_png(plots.plot_code_norm_histogram(diagnostics, tmp_path / "nh.png"), (800, 400))


def test_grad_heatmap_shows_only_codes_with_gradient(diagnostics, tmp_path):
    """Rows of codes without gradient are white (masked); rows with gradient are coloured."""
    one = {**diagnostics, "code_grad_norms": np.zeros_like(diagnostics["code_grad_norms"])}
    one["code_grad_norms"][:, 0] = 1.0
    arr = check_png(plots.plot_grad_heatmap(one, tmp_path / "h.png"), (800, 500), min_std=1.0)
    allg = check_png(plots.plot_grad_heatmap(diagnostics, tmp_path / "h2.png"), (800, 500))
    # Far fewer non-white pixels when one code has gradient than when six do.
    colored = lambda a: ((a < 200).any(-1)).sum()  # noqa: E731
    assert colored(arr) < colored(allg)


def test_diagnostics_figures_from_run_dir(diagnostics, tmp_path):
    np.savez(tmp_path / "diagnostics.npz", **diagnostics)
    recs = plots.diagnostics_figures(tmp_path, tmp_path / "out")
    assert {r.key for r in recs} == {"usage_over_time", "code_grad_norms", "grad_heatmap", "code_norms", "code_norm_hist"}
    for r in recs:
        check_png(r.path)
    with pytest.raises(FileNotFoundError, match="diagnostics"):
        plots.load_diagnostics(tmp_path / "nowhere")


def test_usage_histogram(tmp_path):
    counts = np.zeros(32)
    counts[[1, 5, 7]] = [10, 3, 100]
    check_png(plots.plot_usage_histogram(counts, tmp_path / "h.png"), (1000, 360))


def test_comparison_grid_with_psnr_captions(images, tmp_path):
    rec = (images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    arr = check_png(save_comparison(images, rec, tmp_path / "c.png", ncol=8, scale=2, captions=True))
    # 2 rows of pairs (12 images, 8 per row), each 2 * (32 + 4) pixels high with its padding and a 12-pixel caption
    assert arr.shape[0] == 2 * (2 * (16 * 2 + 4) + 4 + 12)
    assert arr[-3:].min() > 200  # ends on white caption space, no black bar


def test_latents_and_statistics(model, images):
    lat = collect_latents(model, images, batch_size=5)
    h = get_preset("test-taming").model.latent_resolution
    assert lat["latents"].shape == (len(images) * h * h, 8)
    assert lat["index_maps"].shape == (len(images), h, h)
    with torch.no_grad():
        enc = model.encode(images)
    assert torch.equal(lat["indices"], enc.indices.flatten())
    cb = model.quantize.codebook.detach()
    stats = latent_statistics(lat["latents"], cb)
    # the nearest code of every latent is the code the quantizer picked
    picked = cb[lat["indices"]].double()
    assert stats["quantization_error_mean"] == pytest.approx(float((lat["latents"].double() - picked).norm(dim=1).mean()), rel=1e-5)
    assert stats["num_vectors"] == len(lat["latents"])


def test_projection_and_latent_plots(model, images, tmp_path):
    lat = collect_latents(model, images)
    cb = model.quantize.codebook.detach()
    check_png(plot_projection(lat["latents"], lat["indices"], cb, tmp_path / "pca.png", "pca"), (650, 600))
    check_png(plot_projection(lat["latents"], lat["indices"], cb, tmp_path / "tsne.png", "tsne", max_points=150), (650, 600))
    check_png(plot_latent_statistics(lat["latents"], cb, tmp_path / "stats.png"), (1000, 360))
    with pytest.raises(ValueError, match="pca or tsne"):
        plot_projection(lat["latents"], lat["indices"], cb, tmp_path / "x.png", "umap-not-installed")


def test_codebook_atlas_and_token_map(model, images, tmp_path):
    patches = decode_code_patches(model, torch.tensor([0, 3]), tokens=2)
    f = model.config.spatial_factor
    assert patches.shape == (2, 3, 2 * f, 2 * f)
    with torch.no_grad():  # a patch is the decode of a map filled with that code
        expect = model.decode_codes(torch.full((1, 2, 2), 3, dtype=torch.long)).clamp(-1, 1)
    assert torch.allclose(patches[1:], expect, atol=1e-6)
    counts = np.arange(32)[::-1].copy()
    path, shown = save_codebook_atlas(model, tmp_path / "atlas.png", counts, max_codes=16)
    assert shown == list(range(16))  # most used first
    side = 2 * f
    scale = -(-48 // side)
    check_png(path, ((4 * (side + 2) + 2) * scale, (4 * (side + 2) + 2) * scale))
    with torch.no_grad():
        idx = model.encode(images[:1]).indices[0]
    check_png(plot_token_map(images[0], idx, tmp_path / "tokens.png", 32), (1100, 400))


def test_interpolation(model, images, tmp_path):
    x0, x1 = images[0], images[5]
    frames = interpolate(model, x0, x1, steps=5)
    assert frames.shape == (5, 3, 16, 16)
    with torch.no_grad():  # the end points are the reconstructions of the two images
        ends = model(torch.stack([x0, x1])).reconstruction
    assert torch.allclose(frames[0], ends[0], atol=1e-5) and torch.allclose(frames[-1], ends[1], atol=1e-5)
    check_png(save_interpolation(model, x0, x1, tmp_path / "i.png", steps=5, scale=3), (7 * 18 * 3, 16 * 3))


def test_visualize_model_writes_every_picture(model, images, diagnostics, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    np.savez(run / "diagnostics.npz", **diagnostics)
    said = []
    recs = visualize_model(model, images, tmp_path / "viz", run_dir=run, tsne_points=120, say=said.append)
    keys = {r.key for r in recs}
    assert keys == {"reconstructions", "pca", "tsne", "latent_stats", "usage_histogram", "atlas", "token_map",
                    "interpolation", "usage_over_time", "code_grad_norms", "grad_heatmap", "code_norms", "code_norm_hist"}
    for r in recs:
        check_png(r.path)
    index = json.loads((tmp_path / "viz" / "figures.json").read_text())
    assert len(index["figures"]) == len(recs) and index["statistics"]["dim"] == 8
    # only the loss curves are skipped (this run folder has no TensorBoard logs), and the report says why
    assert len(said) == 1 and said[0].startswith("loss curves skipped: no TensorBoard event files"), said
    assert index["notes"] == said


def test_visualize_video_clips(model, tmp_path):
    """Clips through an image tokenizer: GIF and MP4 of original | reconstruction, plus the image pictures."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, 1, 16, 16, generator=g) * 2 - 1
    clip = torch.cat([torch.roll(base, shifts=t, dims=-1) for t in range(5)], dim=2)  # a moving pattern
    said = []
    recs = {r.key: r for r in visualize_model(model, clip, tmp_path, tsne_points=60, say=said.append)}
    assert "video_gif" in recs and "video_frames" in recs and "reconstructions" in recs
    # no run folder: the diagnostics are skipped, with a printed reason
    assert "usage_over_time" not in recs and any("diagnostics skipped" in s for s in said)
    with Image.open(recs["video_gif"].path) as gif:
        assert gif.n_frames == 5
    if "video_mp4" in recs:
        import av

        with av.open(recs["video_mp4"].path) as c:
            assert sum(1 for _ in c.decode(video=0)) == 5
    else:  # only when this PyAV build cannot encode H.264; the reason is printed
        assert any("MP4 not written" in s for s in said)
