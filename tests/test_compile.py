"""``--train.compile true`` through a VQGAN run: across ``disc_start`` (where taming's adaptive weight takes two
retained gradients at the decoder's last layer), with checkpoints that keep an eager run's keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vqgan import load_model
from vqgan.config import load_config
from vqgan.models.autoencoder import BaseVQModel
from vqgan.registry import create_model
from vqgan.train import fit

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_compile_is_in_place_and_leaves_the_last_layer_eager() -> None:
    model = create_model("test-taming").eval()
    keys = list(model.state_dict())
    model.compile(backend="aot_eager")
    assert list(model.state_dict()) == keys  # no "_orig_mod." wrapper
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    rec = model(x).reconstruction
    # The reconstruction comes out of the eager last convolution, not out of the compiled graph: the adaptive
    # weight's retained gradients at that layer never run the compiled backward.
    assert rec.grad_fn.name() == "ConvolutionBackward0"
    for _ in range(2):
        (g,) = torch.autograd.grad(rec, model.last_layer, torch.ones_like(rec), retain_graph=True)
        assert g.shape == model.last_layer.shape
    rec.sum().backward()
    assert model.encoder.conv_in.weight.grad is not None  # and the rest back-propagates through the graph


def _shrunk_ffhq():
    """configs/ffhq_vqgan_f16.yaml (seeds 001/002: a gradient-learned codebook, LPIPS, BatchNorm PatchGAN) shrunk
    to a tiny model on the built-in photos, with the discriminator from the second step."""
    cfg = load_config(CONFIGS / "ffhq_vqgan_f16.yaml")
    m = cfg.model
    m.resolution, m.ch, m.num_groups, m.z_channels, m.embed_dim = 32, 8, 4, 8, 8
    m.quantizer.codebook_size = 32
    cfg.discriminator.ch, cfg.discriminator.n_layers = 8, 2
    cfg.loss.random_backbone, cfg.loss.disc_start = True, 1
    d = cfg.data
    d.kind, d.root, d.resolution, d.batch_size, d.builtin_train_crops, d.val_size = "builtin", None, 32, 2, 8, 4
    t = cfg.train
    t.max_steps, t.val_every_n_steps, t.log_every_n_steps, t.diagnostics_every_n_steps = 2, 2, 1, 1
    return cfg


@pytest.mark.slow
def test_compiled_run_crosses_disc_start_and_resumes_eagerly(tmp_path, monkeypatch) -> None:
    """Two steps, the discriminator and the adaptive weight on from the second. With ``torch.compile`` around the
    whole autoencoder this step raised "This backward function was compiled with non-empty donated buffers which
    requires ... retain_graph=False" (the adaptive weight's retained gradients at the last layer). AOT autograd's
    ``aot_eager`` backend instead of inductor: the same graph capture, compiled backward and donated-buffer check,
    without minutes of C++ builds."""
    original = BaseVQModel.compile
    monkeypatch.setattr(BaseVQModel, "compile", lambda self, *a, **k: original(self, backend="aot_eager"))
    cfg = _shrunk_ffhq()
    assert cfg.loss.adaptive_weight and cfg.model.quantizer.kind == "vq"
    cfg.train.compile = True
    run = tmp_path / "run"
    metrics = fit(cfg, run)
    assert metrics["steps"] == 2 and metrics["skipped_generator"] == 0 and metrics["skipped_discriminator"] == 0
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert not [k for k in state if "_orig_mod" in k]
    model, _ = load_model(run / "checkpoints" / "last.ckpt")
    assert model.config == cfg.model
    # The compiled run's checkpoint resumes without compilation (same keys).
    cfg.train.compile, cfg.train.max_steps = False, 3
    assert fit(cfg, run, resume="last")["steps"] == 3
