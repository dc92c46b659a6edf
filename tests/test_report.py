"""The HTML report of a real (2-step) training run: self-contained, with config, metrics and every picture, and
rendered by headless Chromium with all its images decoded."""

from __future__ import annotations

import json
import re

import pytest

from vqgan.viz.plots import FigureRecord
from vqgan.viz.report import find_browser, rendered_image_status, write_report

BROWSER = find_browser()
needs_browser = pytest.mark.skipif(
    BROWSER is None,
    reason="Chromium is not installed (the Makefile's test target installs Debian's `chromium`); "
    "the report is still built and checked without rendering",
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real run of the tiny preset: checkpoints, config.yaml, metrics.json, diagnostics.npz and TensorBoard logs
    (every step logged, the discriminator on from the first step: every loss curve has points)."""
    from vqgan.registry import get_preset
    from vqgan.train import fit

    cfg = get_preset("test-taming")
    cfg.train.max_steps = 2
    cfg.train.logger = "tensorboard"
    cfg.train.log_every_n_steps = 1
    cfg.loss.disc_start = 0
    d = tmp_path_factory.mktemp("run")
    fit(cfg, d)
    return d


@pytest.fixture(scope="module")
def report(run_dir):
    from vqgan.cli import main

    assert main(["evaluate", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"), "--output", str(run_dir),
                 "--progress", "false", "--whole-split", "false"]) == 0
    assert main(["report", "--run-dir", str(run_dir)]) == 0
    return run_dir / "report.html"


def test_report_is_self_contained_with_config_metrics_and_pictures(report, run_dir):
    html = report.read_text()
    index = json.loads((run_dir / "visualizations" / "figures.json").read_text())
    keys = {f["key"] for f in index["figures"]}
    # every picture of the visualize command, the training diagnostics included (a real diagnostics.npz)
    assert {"reconstructions", "pca", "tsne", "atlas", "token_map", "interpolation", "usage_histogram",
            "usage_over_time", "grad_heatmap", "code_norms", "code_norm_hist", "loss_curves"} <= keys
    assert "Loss curves" in html and "Training" in html
    srcs = re.findall(r"<img[^>]* src='([^']*)'", html)
    assert len(srcs) == len(index["figures"])
    assert all(s.startswith("data:image/png;base64,") for s in srcs)  # nothing loaded from disk or network
    assert "http://" not in html and "https://" not in html
    assert "Training validation metrics" in html and "Evaluation protocol" in html
    assert "test-taming" in html  # the run's config
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert f"{evaluation['metrics']['psnr']:.4g}" in html


def test_loss_curves_are_read_from_the_runs_tensorboard_logs(report, run_dir):
    """Every loss curve of the report has the run's two logged steps, with the values TensorBoard holds."""
    import numpy as np
    from PIL import Image

    from vqgan.viz.curves import PANELS, read_scalars

    scalars = read_scalars(run_dir)
    for _, _, tags, _ in PANELS:
        steps, values = scalars[tags[0][0]]
        assert len(steps) == 2 and steps[0] < steps[1] and np.isfinite(values).all(), tags[0][0]
    assert scalars["train/d_loss"][1].min() > 0 and 0 < scalars["train/usage"][1].max() <= 1
    with Image.open(run_dir / "visualizations" / "loss_curves.png") as im:
        assert im.size == (1200, 600)
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        read_scalars(run_dir / "visualizations")


@needs_browser
def test_report_renders_with_all_images_loaded(report):
    loaded, total = rendered_image_status(report, BROWSER)
    assert total >= 11
    assert loaded == total


@needs_browser
def test_render_check_detects_a_broken_image(tmp_path):
    """The rendering check is not vacuous: a figure whose file is not an image is counted as not loaded."""
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (20, 10), (200, 30, 30)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    page = write_report(tmp_path / "r.html", "t", [FigureRecord("a", "good", str(good), "S"),
                                                   FigureRecord("b", "bad", str(bad), "S")])
    assert rendered_image_status(page, BROWSER) == (1, 2)
