"""The GPU path, on a GPU: quantizers in fp32 and bf16, every seed config trained a few steps under bf16 autocast,
``torch.compile`` against eager, KV-cache sampling against the uncached loop, checkpoints across devices and
``evaluate`` on CUDA against the CPU.

Marked ``cuda`` and skipped, with the reason, where no GPU is visible. ``tests/conftest.py`` hides GPUs from the
rest of the suite (``CUDA_VISIBLE_DEVICES=""`` unless it is already set), so run these with a device named:
``CUDA_VISIBLE_DEVICES=0 pytest -m cuda tests/test_cuda.py`` (``make gpu-check`` does).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from vqgan.config import QuantizerConfig, to_dict
from vqgan.quantizers import build_quantizer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA device visible (the suite hides GPUs unless CUDA_VISIBLE_DEVICES is set; run make gpu-check)",
    ),
]

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEV = torch.device("cuda")

QUANTIZERS = {
    "vq": QuantizerConfig(kind="vq", codebook_size=64, dead_code_threshold=0.01),
    "ema": QuantizerConfig(kind="ema", codebook_size=64, dead_code_threshold=0.01),
    "fsq": QuantizerConfig(kind="fsq", levels=[8, 5, 5, 5]),
    "lfq": QuantizerConfig(kind="lfq", codebook_size=64),
    "simvq": QuantizerConfig(kind="simvq", codebook_size=64),
    "residual": QuantizerConfig(kind="residual", num_stages=2, stage_kind="ema", codebook_size=64, dead_code_threshold=0.01),
}


@pytest.fixture(autouse=True)
def _exact_fp32():
    # Comparisons against eager / CPU results need true fp32 matmuls, not TF32.
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", list(QUANTIZERS))
def test_quantizer_forward_backward_on_cuda(kind: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    q = build_quantizer(QUANTIZERS[kind], 16).to(DEV).train()
    z = torch.randn(4, 16, 8, 8, device=DEV, requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16):
        for _ in range(2):  # k-means initialisation, then EMA updates and restarts
            out = q(z)
            loss = out.quantized.float().pow(2).mean() + out.loss
    loss.backward()
    assert torch.isfinite(loss) and z.grad is not None and torch.isfinite(z.grad).all()
    assert out.indices.device == z.device and out.quantized.shape == z.shape
    assert all(b.device.type == "cuda" for b in q.buffers()) and all(p.device.type == "cuda" for p in q.parameters())
    q.eval()
    with torch.no_grad():
        out = q(z.detach())
        assert torch.equal(q.indices_to_codes(out.indices), out.quantized)


def _seed_configs() -> list[str]:
    # stage-1 image configs, as in the CPU test of every config (tests/test_training.py)
    return sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith("prior") and "video" not in p.name)


@pytest.mark.parametrize("name", _seed_configs())
def test_every_config_trains_in_bf16_on_cuda(name: str, tmp_path: Path) -> None:
    """The trainer's own path (Lightning, bf16-mixed autocast, host-to-device copies) on each config, shrunk."""
    from test_training import SHRINK  # the same shrinking as the CPU test of every config
    from vqgan.cli import main
    from vqgan.config import load_config

    data = load_config(CONFIGS / name).data
    real = ["--data.kind", "builtin", "--data.root", "null", "--data.channels", "3", "--model.in_channels", "3"]
    extra = real if data.kind in ("folder", "ucf101", "video_folder") else []
    args = ["fit", "--config", str(CONFIGS / name), "--run-dir", str(tmp_path / "run"), "--max-steps", "4", *SHRINK,
            *extra, "--train.accelerator", "gpu", "--train.devices", "1", "--train.precision", "bf16-mixed"]
    assert main(args) == 0
    out = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert out["steps"] == 4 and out["skipped_generator"] == 0 and out["skipped_discriminator"] == 0
    assert torch.isfinite(torch.tensor(out["psnr"]))


@pytest.mark.parametrize("name", ["seed000-ucf101-vqgan", "seed001-taming-f16-1024", "seed003-celeba-vqvae",
                                  "seed004-smoke-vqgan"])
def test_seed_step_keeps_codebook_state_on_the_device(name: str) -> None:
    """A few generator + discriminator steps under bf16 autocast: finite losses, and the EMA codebook, the usage
    statistics and the restarts updated on the GPU."""
    from vqgan.registry import get_preset
    from vqgan.train.module import VQGANModule

    cfg = get_preset(name)
    m = cfg.model
    m.resolution, m.ch, m.num_groups = 32, 32, 8
    # No k-means: every code starts unused, so restarts happen from the first step.
    m.quantizer = dataclasses.replace(m.quantizer, dead_code_threshold=0.5, kmeans_init=False)
    cfg.loss = dataclasses.replace(cfg.loss, random_backbone=True, disc_start=0)
    cfg.data.resolution = 32
    module = VQGANModule(to_dict(cfg)).to(DEV).train()
    opt = module.configure_optimizers()[0][0]
    q = module.model.quantize
    codebook0 = q.codebook.detach().clone()
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32, device=DEV) * 2 - 1
    mask = (x[:, :1] > 0) if cfg.loss.reconstruction == "masked_l2" else None
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            step = module.compute_gradients(x, mask, 1.0 if module.discriminator is not None else 0.0)
        assert torch.isfinite(step.g.loss) and torch.isfinite(step.g_norm)
        if step.d is not None:
            assert torch.isfinite(step.d.loss)
        opt.step()
    assert all(b.device.type == "cuda" for b in module.model.buffers())
    assert not torch.equal(q.codebook.detach(), codebook0)
    assert float(q.pop_window()["restarts"]) > 0


def test_compiled_quickstart_model_matches_eager() -> None:
    from vqgan.registry import create_model

    torch.manual_seed(0)
    model = create_model("quickstart").to(DEV).eval()
    x = torch.rand(8, 3, 32, 32, device=DEV) * 2 - 1
    with torch.no_grad():
        eager = model(x)
        model.compile()
        compiled = model(x)
    assert (compiled.indices == eager.indices).float().mean() > 0.99
    torch.testing.assert_close(compiled.reconstruction, eager.reconstruction, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_gpt_kv_cache_sampling_matches_uncached_on_cuda(cfg_scale: float) -> None:
    from vqgan.models.prior import build_prior, get_prior_preset

    torch.manual_seed(0)
    prior = build_prior(get_prior_preset("test-gpt").model).to(DEV).eval()
    labels = torch.arange(4, device=DEV)
    maps = {}
    for cache in (True, False):
        g = torch.Generator(device=DEV).manual_seed(1)
        maps[cache] = prior.generate(labels=labels, cfg_scale=cfg_scale, top_k=8, use_cache=cache, generator=g)
    assert maps[True].device.type == "cuda"
    assert torch.equal(maps[True], maps[False])


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory) -> Path:
    """test-taming trained two steps on the GPU by the trainer (bf16-mixed)."""
    from vqgan.registry import get_preset
    from vqgan.train import fit

    cfg = get_preset("test-taming")
    cfg.train.accelerator, cfg.train.devices, cfg.train.precision = "gpu", "1", "bf16-mixed"
    run = tmp_path_factory.mktemp("cuda_run")
    fit(cfg, run)
    return run


def test_checkpoint_written_on_cuda_loads_on_cpu_and_back(cuda_run: Path) -> None:
    from vqgan import load_model

    ckpt = cuda_run / "checkpoints" / "last.ckpt"
    cpu_model, _ = load_model(ckpt, map_location="cpu")
    gpu_model, _ = load_model(ckpt, map_location="cuda")
    assert all(p.device.type == "cpu" for p in cpu_model.parameters())
    assert all(p.device.type == "cuda" for p in gpu_model.parameters())
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        on_cpu = cpu_model(x)
        back = cpu_model.to(DEV)(x.to(DEV))
        on_gpu = gpu_model(x.to(DEV))
    torch.testing.assert_close(back.reconstruction, on_gpu.reconstruction)
    torch.testing.assert_close(on_cpu.reconstruction, on_gpu.reconstruction.cpu(), atol=1e-4, rtol=1e-4)


def test_evaluate_on_cuda_matches_cpu(cuda_run: Path) -> None:
    from torch.utils.data import DataLoader

    from vqgan import load_model
    from vqgan.data import build_datasets, collate_skip
    from vqgan.metrics.evaluate import reconstruction_metrics

    model, cfg = load_model(cuda_run / "checkpoints" / "last.ckpt")
    _, val = build_datasets(cfg.data, 0)
    loader = DataLoader(val, batch_size=4, shuffle=False, collate_fn=collate_skip)
    cpu = reconstruction_metrics(model, loader, device="cpu")
    gpu = reconstruction_metrics(model, loader, device="cuda")
    for key in ("psnr", "ssim"):
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-3), key
    assert gpu["num_images"] == cpu["num_images"]
    assert abs(gpu["codes_used"] - cpu["codes_used"]) <= 1  # a tie in the nearest-code search may flip
