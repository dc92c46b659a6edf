"""Numerics: a NaN or Inf loss or gradient skips that step, for the generator and the discriminator separately,
leaves no trace in the weights, the EMA codebook or the BatchNorm statistics, and is counted in the logs and in
``metrics.json``; after ``train.max_nonfinite_steps`` in a row training stops with a message, no checkpoint is
written with the bad state, and the last good checkpoints are kept.

Faults are injected into a real (tiny) training run: a NaN batch, an Inf generator gradient, a NaN discriminator
gradient, a NaN weight that persists.
"""

from __future__ import annotations

import json
import logging

import lightning as L
import pytest
import torch

import vqgan.train.module as module_mod
from vqgan.models.io import verify_checkpoint
from vqgan.registry import get_preset
from vqgan.train import NonFiniteLossError, fit

# One thread, and vqgan log handlers restored after each test (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread_and_own_log_handlers")


def _tiny(max_steps: int):
    cfg = get_preset("test-taming")  # EMA codebook + PatchGAN (BatchNorm) from step 1
    cfg.loss.perceptual = "none"
    cfg.data.builtin_train_crops = 64
    cfg.train.max_steps = max_steps
    cfg.train.val_every_n_steps = 100
    cfg.train.diagnostics_every_n_steps = 0
    return cfg


class Faults(L.Callback):
    """Poisons chosen steps and records, per step, whether each network's state changed."""

    def __init__(self, nan_batch=(), inf_gen_grad=(), nan_disc_grad=(), nan_weight_from=None):
        self.nan_batch, self.inf_gen_grad, self.nan_disc_grad = set(nan_batch), set(inf_gen_grad), set(nan_disc_grad)
        self.nan_weight_from = nan_weight_from
        self.step = -1
        self.changed: dict[int, tuple[bool, bool]] = {}

    @staticmethod
    def _state(m):
        gen = {k: v.clone() for k, v in m.model.state_dict().items()}
        disc = {k: v.clone() for k, v in m.discriminator.state_dict().items()}
        return gen, disc

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.step += 1
        if self.step in self.nan_batch:
            batch["image"][0, 0, 0, 0] = float("nan")
        if self.nan_weight_from is not None and self.step == self.nan_weight_from:
            with torch.no_grad():
                next(pl_module.model.parameters()).view(-1)[0] = float("nan")
        self.before = self._state(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        after = self._state(pl_module)
        same = [all(torch.equal(b[k], a[k]) for k in b) for b, a in zip(self.before, after, strict=True)]
        self.changed[self.step] = (not same[0], not same[1])


def _inject_gradient_faults(monkeypatch, faults: Faults) -> None:
    gen_fb, disc_fb = module_mod.generator_forward_backward, module_mod.discriminator_forward_backward

    def gen(*args, **kwargs):
        out = gen_fb(*args, **kwargs)
        if faults.step in faults.inf_gen_grad:
            params = args[6] if len(args) > 6 else kwargs["params"]
            params[0].grad.view(-1)[0] = float("inf")
        return out

    def disc(*args, **kwargs):
        out = disc_fb(*args, **kwargs)
        if faults.step in faults.nan_disc_grad:
            params = args[5] if len(args) > 5 else kwargs["params"]
            params[0].grad.view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(module_mod, "generator_forward_backward", gen)
    monkeypatch.setattr(module_mod, "discriminator_forward_backward", disc)


def test_nonfinite_steps_are_skipped_per_network_and_counted(tmp_path, monkeypatch, caplog):
    faults = Faults(nan_batch=[2], inf_gen_grad=[4], nan_disc_grad=[6])
    _inject_gradient_faults(monkeypatch, faults)
    with caplog.at_level(logging.WARNING, logger="vqgan"):
        metrics = fit(_tiny(7), tmp_path, extra_callbacks=[faults])
    # (generator changed, discriminator changed) per step: a skipped network is left exactly as it was -- its
    # weights, and the state its forward pass rewrites in place (EMA codebook, usage counts, BatchNorm statistics).
    assert faults.changed[2] == (False, False)  # NaN batch: both losses non-finite
    assert faults.changed[4] == (False, True)  # Inf generator gradient: only the generator skips
    assert faults.changed[6] == (True, False)  # NaN discriminator gradient: only the discriminator skips
    assert all(faults.changed[s] == (True, True) for s in (1, 3, 5))  # healthy steps update both
    assert metrics["skipped_generator"] == 2 and metrics["skipped_discriminator"] == 2 and metrics["steps"] == 7
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["skipped_generator"] == 2 and saved["skipped_discriminator"] == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("non-finite generator and discriminator skipped" in m for m in messages)
    assert any("non-finite generator skipped (1 in a row)" in m for m in messages)
    assert any("non-finite discriminator skipped (1 in a row)" in m for m in messages)
    ckpt = verify_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values() if t.is_floating_point())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "logs")).Reload()
    assert acc.Scalars("train/skipped_generator")[-1].value == 2
    assert acc.Scalars("train/skipped_discriminator")[-1].value == 2


def test_too_many_nonfinite_steps_stop_and_keep_the_last_good_checkpoint(tmp_path):
    cfg = _tiny(20)
    cfg.train.checkpoint_every_n_steps = 1
    cfg.train.keep_last_k = 2
    cfg.train.max_nonfinite_steps = 3
    faults = Faults(nan_weight_from=4)  # a weight becomes NaN before step 5 and stays NaN
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps with a non-finite loss or gradient"):
        fit(cfg, tmp_path, extra_callbacks=[faults])
    assert faults.step == 6  # steps 5, 6, 7 (indices 4-6) were non-finite; the run stopped at the third
    files = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert files == ["step0000003.ckpt", "step0000004.ckpt"], files  # the last two good ones, nothing after
    for name in files:
        ckpt = verify_checkpoint(tmp_path / "checkpoints" / name)
        assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values() if t.is_floating_point())


def test_cli_stops_with_a_message_not_a_traceback(tmp_path, monkeypatch, capsys):
    from vqgan.cli import main

    faults = Faults(inf_gen_grad=range(100))
    faults.step = 0  # every call is poisoned (no callback advances the counter here)
    _inject_gradient_faults(monkeypatch, faults)
    rc = main(["fit", "--preset", "test-resnet", "--run-dir", str(tmp_path), "--max-steps", "10",
               "--train.max_nonfinite_steps", "2", "--train.checkpoint_every_n_steps", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "2 consecutive steps with a non-finite loss or gradient" in err and "Traceback" not in err
    assert "train.max_nonfinite_steps" in err  # says what to change
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))  # nothing non-finite was saved
