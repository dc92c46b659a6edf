"""Device placement and host synchronisation, checked on CPU-only machines.

Every registered preset (tokenizers, their discriminator and losses, priors and their sampling loops) is built
on the ``meta`` device and materialised on a *fake* ``cuda`` device under torch's ``FakeTensorMode``: tensors
carry a device, a shape and a dtype but no data, so no GPU is needed. Inside it

* an op that mixes a CPU tensor (one created without ``device=`` inside a forward pass) with the model's
  ``cuda`` tensors raises ``FakeTensorDeviceMismatchError``, naming the line;
* reading a value back to the host (``.item()``, ``.tolist()``, ``int(t)``, ``if t.any():``, indexing with a
  tensor scalar) raises ``DataDependentOutputException``: on a GPU each of those waits for every queued kernel;
* a copy from ``cuda`` to the CPU (``.cpu()``, ``.to("cpu")``, ``.numpy()``) raises from :class:`_NoDeviceToHost`.

The training forward passes run twice (the first initialises the codebook by k-means, the second takes the EMA
update and the dead-code restarts), then an eval encode/decode. Backward passes need a real device (the autograd
engine asks the CUDA driver for a context); ``tests/test_cuda.py`` covers them on a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from vqgan.losses import VQGANLoss
from vqgan.models import PatchDiscriminator, build_model
from vqgan.models.prior import build_prior, get_prior_preset, list_prior_presets
from vqgan.registry import get_preset, list_presets

pytestmark = pytest.mark.usefixtures("one_thread")

_aten = torch.ops.aten


class DeviceToHostCopy(AssertionError):
    """A tensor was copied from the (fake) GPU to the CPU inside a checked region."""


class _NoDeviceToHost(TorchDispatchMode):
    """Raises on any copy from a ``cuda`` tensor to a CPU one (it would synchronise with the GPU)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (_aten._to_copy.default, _aten.copy_.default, _aten.copy.default):
            src = args[1] if func is not _aten._to_copy.default else args[0]
            dst = out
            if isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor):
                if src.device.type == "cuda" and dst.device.type == "cpu":
                    raise DeviceToHostCopy(f"{func} copies a cuda tensor {tuple(src.shape)} to the CPU")
        return out


@contextlib.contextmanager
def fake_cuda(*modules: nn.Module | None) -> Iterator[None]:
    """Materialise ``modules`` (built on the ``meta`` device) as empty tensors on a fake ``cuda`` device, and check
    the code run inside for device mismatches, host reads and device-to-host copies."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        for root in modules:
            # Module by module (``modules()`` lists each once): lpips registers its linear layers twice (``lin0``
            # and ``lins[0]``), and a second visit of an already fake parameter would try to swap it in place.
            for m in root.modules() if root is not None else ():
                m.to_empty(device="cuda", recurse=False)
        with _NoDeviceToHost():
            yield


def _on_meta(fn, *args):
    with torch.device("meta"):
        return fn(*args)


def _input(cfg, batch: int = 2) -> torch.Tensor:
    d = cfg.data
    spatial = (d.resolution, d.resolution)
    shape = (batch, d.channels, d.frames, *spatial) if cfg.model.arch == "video3d" else (batch, d.channels, *spatial)
    return torch.rand(shape, device="cuda") * 2 - 1


# -- the context itself catches what it promises to catch ----------------------------------------------------------
def test_fake_cuda_catches_mismatch_host_reads_and_copies() -> None:
    lin = _on_meta(nn.Linear, 4, 4)
    with fake_cuda(lin):
        x = torch.randn(2, 4, device="cuda")
        assert lin(x).device.type == "cuda"
        assert (x * torch.tensor(2.0)).device.type == "cuda"  # CPU scalars are allowed, as on a real GPU
        with pytest.raises(RuntimeError, match="same device"):
            lin(x) + torch.zeros(4)  # a CPU tensor created inside a forward pass
        with pytest.raises(DataDependentOutputException):
            bool((x > 0).any())
        with pytest.raises(DataDependentOutputException):
            x.sum().item()
        with pytest.raises(DeviceToHostCopy):
            x.cpu()


# -- tokenizers, their losses and discriminators ---------------------------------------------------------------
@pytest.mark.parametrize("name", list_presets())
def test_tokenizer_preset_stays_on_device_without_host_reads(name: str) -> None:
    cfg = get_preset(name)
    cfg.loss = dataclasses.replace(cfg.loss, random_backbone=True)  # nothing to read from disk
    model = _on_meta(build_model, cfg.model)
    loss_fn = _on_meta(VQGANLoss, cfg.loss)
    out_ch = cfg.model.out_channels or cfg.model.in_channels
    # Built for real (spectral norm's power iteration runs at construction) and moved, as a user would.
    disc = PatchDiscriminator(cfg.discriminator, out_ch) if cfg.loss.disc_weight > 0 else None
    with fake_cuda(model, loss_fn):
        if disc is not None:
            disc.to("cuda")
        x = _input(cfg)
        mask = (x[:, :1] > 0) if cfg.loss.reconstruction == "masked_l2" else None
        model.train()
        for _ in range(2):  # k-means initialisation, then EMA updates and restarts
            out = model(x)
            assert out.reconstruction.device.type == "cuda" and out.indices.device.type == "cuda"
            logits_fake = disc(out.reconstruction) if disc is not None else None
            g = loss_fn.generator_loss(x, out.reconstruction, out.vq_loss, logits_fake, 1.0, mask)
            assert g.loss.device.type == "cuda"
            if disc is not None:
                d = loss_fn.discriminator_loss(disc(x), disc(out.reconstruction.detach()), 1.0)
                assert d.loss.device.type == "cuda"
        q = model.quantize
        assert all(b.device.type == "cuda" for b in q.buffers())
        q.pop_window()
        q.dead_codes()
        model.eval()
        with torch.no_grad():
            enc = model.encode(x)
            rec = model.decode_codes(enc.indices)
            assert rec.shape == x.shape and rec.device.type == "cuda"
            assert q.codebook.device.type == "cuda"


# -- priors and their sampling loops -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_prior_presets())
def test_prior_preset_training_forward_stays_on_device(name: str) -> None:
    cfg = get_prior_preset(name).model
    prior = _on_meta(build_prior, cfg)
    with fake_cuda(prior):
        prior.train()
        labels = torch.tensor([0, -1], device="cuda")
        if cfg.kind == "flow":  # continuous latents in, a velocity out
            latents = torch.randn(2, cfg.latent_channels, cfg.token_height, cfg.token_width, device="cuda")
            out = prior.training_loss(latents, labels)
            assert out.loss.device.type == "cuda" and out.velocity.device.type == "cuda"
            return
        tokens = torch.randint(cfg.vocab_size, (2, *cfg.token_shape), device="cuda")  # (h, w) maps or (T, h, w)
        out = prior.training_loss(tokens, labels)
        assert out.loss.device.type == "cuda" and out.logits.device.type == "cuda"


_SAMPLING = [
    pytest.param(dict(use_cache=True), id="cache"),
    pytest.param(dict(use_cache=False, top_k=5), id="nocache-topk"),
    pytest.param(dict(cfg_scale=2.0, top_p=0.9), id="guided-topp"),
]


@pytest.mark.parametrize("kwargs", _SAMPLING)
@pytest.mark.parametrize("name", [n for n in list_prior_presets() if n.startswith("test-")])
def test_prior_sampling_loop_never_waits_for_the_device(name: str, kwargs: dict) -> None:
    cfg = get_prior_preset(name).model
    prior = _on_meta(build_prior, cfg)
    if cfg.kind != "gpt":
        kwargs = {k: v for k, v in kwargs.items() if k != "use_cache"}
    shape = cfg.token_shape
    if cfg.kind == "flow":  # an ODE, not a categorical: guidance and the sampler are its knobs
        kwargs = {"cfg_scale": kwargs.get("cfg_scale", 1.0), "sampler": "heun" if "top_p" in kwargs else "euler"}
        shape = (cfg.latent_channels, cfg.token_height, cfg.token_width)
    with fake_cuda(prior):
        prior.eval()
        maps = prior.generate(labels=torch.tensor([1, 2], device="cuda"), **kwargs)
        assert maps.shape == (2, *shape) and maps.device.type == "cuda"


# -- the GPU benchmark's dry run -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_gpu_benchmark_dry_run_prints_its_table_and_result(tmp_path) -> None:
    """``benchmarks/gpu.py --dry-run`` runs the benchmark's code on the CPU with tiny sizes."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), "--dry-run", "--time-limit", "1000", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("RESULT dry_run=1 ")
    fields = dict(kv.split("=") for kv in lines[-1].split()[1:])
    for key in ("images_per_s_fp32", "images_per_s_bf16", "images_per_s_bf16_compile", "ratio_vs_diffusers_bf16",
                "tflops_bf16", "gpt_tokens_per_s_cache", "gpt_tokens_per_s_no_cache"):
        assert float(fields[key]) > 0, key
    assert int(fields["max_batch"]) >= 2
    assert any(line.startswith("ours       bf16+compile") for line in lines)
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert saved["dry_run"] and not saved["skipped"] and set(saved["images_per_s"]) == {
        f"{impl}/{p}" for impl in ("ours", "diffusers") for p in ("fp32", "bf16", "bf16+compile")}
