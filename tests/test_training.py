"""Stage-1 training end to end: the run folder, the GAN schedule, no gradient leaks, every seed config, resume."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from vqgan.cli import main
from vqgan.config import load_config
from vqgan.models.io import load_model
from vqgan.registry import get_preset
from vqgan.train import fit

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# Shrink any stage-1 config to a tiny model on the built-in photos, with every loss term switched on early.
SHRINK = [
    "--model.resolution", "32", "--data.resolution", "32", "--data.patch_size", "null",
    "--model.ch", "8", "--model.num_groups", "4", "--model.z_channels", "8", "--model.embed_dim", "8",
    "--model.quantizer.codebook_size", "32", "--discriminator.ch", "8", "--discriminator.n_layers", "2",
    "--loss.random_backbone", "true", "--loss.disc_start", "1",
    "--data.batch_size", "2", "--data.builtin_train_crops", "8", "--data.val_size", "4", "--data.num_workers", "0",
    "--train.val_every_n_steps", "2", "--train.log_every_n_steps", "1",
]


def test_fit_writes_the_run_folder(tmp_path):
    run = tmp_path / "run"
    cfg = get_preset("test-taming")
    metrics = fit(cfg, run)
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert list((run / "samples").glob("step_*.png"))
    assert list((run / "logs").glob("events.out.tfevents.*"))
    saved = json.loads((run / "metrics.json").read_text())
    for key in ("psnr", "ssim", "codebook_usage", "perplexity"):
        assert key in saved and saved[key] == pytest.approx(metrics[key])
    assert 0 < saved["codebook_usage"] <= 1 and saved["perplexity"] >= 1 and saved["steps"] == 2
    # The checkpoint holds the resolved config and loads back into the same model (weights_only).
    model, exp = load_model(run / "checkpoints" / "last.ckpt")
    assert exp.model == cfg.model


class _GradProbe(L.Callback):
    """Copies the generator's gradients when the optimizer steps (after both backward passes)."""

    def __init__(self):
        self.grads = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.grads is None:
            self.grads = [p.grad.clone() for p in pl_module.generator_parameters() if p.grad is not None]
            self.disc_grads = [p.grad for p in pl_module.discriminator_parameters()]


def test_discriminator_loss_sends_no_gradient_into_the_generator(tmp_path, monkeypatch):
    """dome272's VQGAN leaked the discriminator's loss into the generator; scaling that loss by 1e6 must leave
    the generator's gradients exactly unchanged."""
    from vqgan.losses.vqgan import VQGANLoss

    def run(scale, name):
        cfg = get_preset("test-taming")
        cfg.train.max_steps = 1
        cfg.train.grad_clip = None
        cfg.loss.disc_start = 0
        probe = _GradProbe()
        fit(cfg, tmp_path / name, extra_callbacks=[probe])
        return probe

    original = VQGANLoss.discriminator_loss
    base = run(1.0, "a")
    monkeypatch.setattr(
        VQGANLoss, "discriminator_loss",
        lambda self, r, f, k: type(original(self, r, f, k))(original(self, r, f, k).loss * 1e6, {}),
    )
    scaled = run(1e6, "b")
    assert base.grads and len(base.grads) == len(scaled.grads)
    for a, b in zip(base.grads, scaled.grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # ... while the discriminator did receive (much larger) gradients
    assert all(g is not None for g in scaled.disc_grads)
    ratio = torch.stack([b.norm() for b in scaled.disc_grads]).sum() / torch.stack([a.norm() for a in base.disc_grads]).sum()
    assert ratio > 1e5


def _config_files():
    files = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    # stage-1 image configs only (priors and the 3D video tokenizer have their own tests)
    return [f for f in files if not f.startswith("prior") and "video" not in f]


@pytest.mark.parametrize("name", _config_files())
def test_every_config_fits_two_steps_on_builtin_data(name, tmp_path, capsys):
    run = tmp_path / "run"
    data = load_config(CONFIGS / name).data
    # configs that read data from disk train on the built-in photos instead; synthetic data is kept
    real = ["--data.kind", "builtin", "--data.root", "null", "--data.channels", "3", "--model.in_channels", "3"]
    extra = real if data.kind in ("folder", "ucf101", "video_folder") else []
    rc = main(["fit", "--config", str(CONFIGS / name), "--run-dir", str(run), "--max-steps", "2", *SHRINK, *extra])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["steps"] == 2 and 0 < out["codebook_usage"] <= 1
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["steps"] == 2
    cfg_text = (run / "config.yaml").read_text()
    assert "ch: 8" in cfg_text  # the resolved config, overrides included


def test_resume_continues_the_step_count(tmp_path):
    run = tmp_path / "run"
    cfg = get_preset("test-resnet")
    fit(cfg, run)
    cfg.train.max_steps = 4
    metrics = fit(cfg, run, resume="last")
    assert metrics["steps"] == 4
    assert metrics["resumed_from"].endswith("last.ckpt")


class _Recorder(L.Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        m = trainer.callback_metrics
        self.rows.append({k: float(m[k]) for k in ("train/disc_factor", "train/d_loss", "train/g_adv") if k in m})


def test_two_stage_schedule_switches_the_gan_on(tmp_path):
    """Seed 000/004: reconstruction (+ perceptual) first, the adversarial terms only from ``disc_start``, then a
    ramp to ``disc_weight_max``."""
    cfg = get_preset("test-taming")
    cfg.train.max_steps = 5
    cfg.loss.disc_start, cfg.loss.disc_ramp_steps, cfg.loss.disc_weight_max = 2, 2, 0.75
    rec = _Recorder()
    fit(cfg, tmp_path / "run", extra_callbacks=[rec])
    factors = [r["train/disc_factor"] for r in rec.rows]
    assert factors == pytest.approx([0, 0, 0.375, 0.75, 0.75])
    assert all("train/d_loss" not in r for r in rec.rows[:2])  # no discriminator step before disc_start
    assert all("train/d_loss" in r and "train/g_adv" in r for r in rec.rows[2:])
