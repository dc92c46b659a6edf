"""Data-parallel training: two CPU processes (Lightning DDP over gloo) train the tiny taming VQGAN for a few steps;
afterwards every parameter and the codebook (with its EMA statistics) must be identical on both ranks, the
checkpoint must resume in a single process, and a run stopped and resumed on two processes must end exactly where
an uninterrupted two-process run ends (same data order on every rank).

Also checks that the training step's single backward pass through LPIPS and the discriminator
(``vqgan/train/step.py``) gives the same gradients as taming's formulation (two ``autograd.grad`` calls on the
last layer, then the full backward pass).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vqgan.config import to_dict
from vqgan.losses import LossOutput, adaptive_weight_from_grads, generator_adversarial_loss
from vqgan.registry import get_preset
from vqgan.train.module import VQGANModule
from vqgan.train.step import generator_forward_backward

# Run by each DDP process: Lightning's launcher starts rank 1 by running this same script again.
_DDP_SCRIPT = textwrap.dedent(
    """
    import sys, torch, lightning as L
    from vqgan.registry import get_preset
    from vqgan.train.fit import fit

    class SaveRankState(L.Callback):
        # Every rank writes its own weights and buffers (checkpoints are written by rank 0 only).
        def on_train_end(self, trainer, module):
            state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items() if not k.startswith("loss_fn.")}
            torch.save({"state": state, "step": trainer.global_step}, f"{sys.argv[1]}/rank{trainer.global_rank}.pt")

    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    resume = sys.argv[3] if len(sys.argv) > 3 else None
    cfg = get_preset("test-taming")
    cfg.train.max_steps = steps
    cfg.train.val_every_n_steps = steps
    cfg.train.logger = "none"
    cfg.train.accelerator, cfg.train.devices, cfg.train.strategy = "cpu", "2", "ddp"
    cfg.data.num_workers = 0
    fit(cfg, sys.argv[1], resume=resume, extra_callbacks=[SaveRankState()])
    """
)


def _launch_ddp(run_dir: Path, *args: str) -> None:
    """Run the two-process training script in ``run_dir`` (``args``: max steps, checkpoint to resume)."""
    import os

    run_dir.mkdir(parents=True, exist_ok=True)
    script = run_dir / "train_ddp.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    proc = subprocess.run([sys.executable, str(script), str(run_dir), *args], capture_output=True, text=True,
                          timeout=240, env=env, cwd=run_dir)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("ddp")
    _launch_ddp(run_dir)
    # The periodic checkpoint written during training (what a crashed run resumes from), kept aside: another test
    # resumes this run on one process and rewrites the folder.
    shutil.copy(run_dir / "checkpoints" / "step0000003.ckpt", run_dir / "step3.ckpt")
    return run_dir


def test_ddp_ranks_identical(ddp_run: Path) -> None:
    r0 = torch.load(ddp_run / "rank0.pt", weights_only=True)
    r1 = torch.load(ddp_run / "rank1.pt", weights_only=True)
    assert r0["step"] == r1["step"] == 3
    s0, s1 = r0["state"], r1["state"]
    assert s0.keys() == s1.keys()
    # Parameters (all-reduced gradients) and the codebook with its EMA statistics (all-reduced in the quantizer)
    # must agree. BatchNorm running statistics of the discriminator are per rank between DDP's buffer broadcasts.
    compared = [k for k in s0 if not k.startswith("discriminator.") or not ("running_" in k or "num_batches" in k)]
    assert any(k.startswith("model.quantize.embedding") for k in compared)
    assert any(k.startswith("model.quantize.ema_") for k in compared)
    for k in compared:
        torch.testing.assert_close(s0[k], s1[k], rtol=0, atol=1e-6, msg=f"{k} differs between ranks")
    # Training moved the weights away from their initial values (so equality is not trivially true).
    torch.manual_seed(0)
    init = VQGANModule(to_dict(get_preset("test-taming"))).state_dict()
    assert not torch.equal(init["model.decoder.conv_out.weight"], s0["model.decoder.conv_out.weight"])
    # Checkpoint written by rank 0 holds rank 0's state.
    ckpt = torch.load(ddp_run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    torch.testing.assert_close(ckpt["state_dict"]["model.quantize.embedding.weight"], s0["model.quantize.embedding.weight"])


def test_ddp_checkpoint_resumes_on_one_process(ddp_run: Path) -> None:
    from vqgan.train.fit import fit

    cfg = get_preset("test-taming")
    cfg.train.max_steps = 4
    cfg.train.val_every_n_steps = 4
    cfg.train.logger = "none"
    cfg.train.accelerator, cfg.train.devices, cfg.train.strategy = "cpu", "1", "auto"
    metrics = fit(cfg, ddp_run, resume=str(ddp_run / "checkpoints" / "last.ckpt"))
    assert metrics["steps"] == 4
    resumed = torch.load(ddp_run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert resumed["global_step"] == 4
    assert torch.isfinite(resumed["state_dict"]["model.quantize.embedding.weight"]).all()


def test_ddp_resume_is_exact(ddp_run: Path, tmp_path: Path) -> None:
    """3 steps on 2 processes, then resumed from the step-3 checkpoint on 2 processes to 6 steps (past the end of the
    32-crop epoch: 8 crops a step), ends bit-for-bit where 6 uninterrupted steps end, on both ranks: every rank sees
    the same batches in the same order after the resume (the sampler shards itself; Lightning's wrapper would
    re-shuffle the positions)."""
    _launch_ddp(tmp_path / "full", "6")
    (tmp_path / "resumed").mkdir()
    _launch_ddp(tmp_path / "resumed", "6", str(ddp_run / "step3.ckpt"))
    for rank in (0, 1):
        full = torch.load(tmp_path / "full" / f"rank{rank}.pt", weights_only=True)
        resumed = torch.load(tmp_path / "resumed" / f"rank{rank}.pt", weights_only=True)
        assert full["step"] == resumed["step"] == 6
        for k, v in full["state"].items():
            if k.startswith("discriminator.") and ("running_" in k or "num_batches" in k):
                continue  # per-rank BatchNorm statistics between DDP's buffer broadcasts
            torch.testing.assert_close(resumed["state"][k], v, rtol=0, atol=0, msg=f"rank {rank}: {k} differs")


def _taming_generator_loss(module: VQGANModule, x: torch.Tensor, out) -> LossOutput:
    """taming's VQLPIPSWithDiscriminator generator loss: the adaptive weight from two ``autograd.grad`` calls of
    the whole losses at the decoder's last layer, then one backward of the sum (the reference, written here)."""
    c, rec, last = module.loss_fn.cfg, out.reconstruction, module.model.last_layer
    nll = module.loss_fn.nll(x, rec)
    g_adv = generator_adversarial_loss(module.discriminator(rec), c.gan_loss)
    grads = [torch.autograd.grad(loss, last, retain_graph=True)[0] for loss in (nll.loss, g_adv)]
    d_weight = adaptive_weight_from_grads(*grads, c.adaptive_weight_max) * c.disc_weight
    total = nll.loss + out.vq_loss + d_weight * g_adv
    logs = {**nll.logs, "vq": out.vq_loss.detach(), "g_adv": g_adv.detach(), "d_weight": d_weight, "total": total.detach()}
    return LossOutput(total, logs)


def test_single_backward_matches_taming_gradients() -> None:
    """The regrouped backward (one pass through LPIPS and the discriminator) equals taming's formulation."""
    cfg = get_preset("test-taming")
    cfg.model.quantizer.kmeans_init = False
    torch.manual_seed(0)
    ref = VQGANModule(to_dict(cfg)).train()
    new = copy.deepcopy(ref)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1

    torch.manual_seed(2)  # the same random dead-code restarts in both forward passes
    out = ref.model(x)
    g = _taming_generator_loss(ref, x, out)
    params = ref.generator_parameters()
    g.loss.backward(inputs=params)

    torch.manual_seed(2)
    _, g2 = generator_forward_backward(new.model, new.loss_fn, new.discriminator, x, None, 1.0, new.generator_parameters())
    for k in ("total", "nll", "g_adv", "d_weight", "vq"):
        torch.testing.assert_close(g2.logs[k], g.logs[k], rtol=1e-5, atol=1e-7)
    scale = max(p.grad.abs().max() for p in params)
    named = [(n, p) for n, p in ref.model.named_parameters() if p.requires_grad]
    for (name, p), q in zip(named, new.generator_parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-5 * scale, msg=name)
    # No gradient reached the discriminator during the generator's step.
    assert all(p.grad is None for p in new.discriminator.parameters())
