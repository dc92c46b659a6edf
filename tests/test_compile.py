"""``--train.compile true`` through a VQGAN run: across ``disc_start`` (where taming's adaptive weight takes two
retained gradients at the decoder's last layer), with checkpoints that keep an eager run's keys."""

from __future__ import annotations

import pytest
import torch

from vqgan import load_model
from vqgan.models.autoencoder import BaseVQModel
from vqgan.registry import create_model, get_preset
from vqgan.train import fit

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


@pytest.mark.slow
def test_compiled_run_crosses_disc_start_and_resumes_eagerly(tmp_path, monkeypatch) -> None:
    """Two steps, the discriminator and the adaptive weight on from the second. AOT autograd's ``aot_eager``
    backend instead of inductor: the same graph capture and compiled backward, without minutes of C++ builds."""
    original = BaseVQModel.compile
    monkeypatch.setattr(BaseVQModel, "compile", lambda self, *a, **k: original(self, backend="aot_eager"))
    cfg = get_preset("test-taming")
    assert cfg.loss.adaptive_weight and cfg.loss.disc_start == 1
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
