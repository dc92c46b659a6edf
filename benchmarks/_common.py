"""Shared helpers of the benchmarks: interleaved timing with medians, FLOP counting, a measured fp32 convolution
peak, peak memory of a variant measured in its own process, and plain-text tables.

The machine running the benchmarks may be shared, so every comparison interleaves the variants (ours, theirs,
ours, theirs, ...) and reports medians; ratios between variants measured this way are stable even when absolute
numbers move.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def device() -> torch.device:
    """CUDA when available (benchmarks are also meant for GPUs), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_once(fn: Callable[[], object], dev: torch.device) -> float:
    """Wall-clock seconds of one call of ``fn`` (synchronised on CUDA)."""
    sync(dev)
    t0 = time.perf_counter()
    fn()
    sync(dev)
    return time.perf_counter() - t0


def interleaved(
    fns: dict[str, Callable[[], object]], dev: torch.device, repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Time every function ``repeats`` times, round-robin (a, b, a, b, ...), after ``warmup`` untimed rounds.

    Round-robin keeps slow phases of a contended machine from favouring one variant; take the median.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        # Alternate the order every round as well, so neither variant always runs right after the other.
        order = list(fns) if r % 2 == 0 else list(reversed(fns))
        for k in order:
            times[k].append(time_once(fns[k], dev))
    return times


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call of ``fn`` (forward and backward), with PyTorch's FLOP formulas
    (``torch.utils.flop_counter``: matmuls, convolutions, attention; elementwise ops and norms are not counted).

    A bare dispatch mode rather than ``FlopCounterMode``, whose per-module backward hooks do not support
    ``autograd.grad`` with respect to a leaf tensor (which the training step uses)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    total = 0

    class _Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            nonlocal total
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                total += int(formula(*args, **kwargs, out_val=out))
            return out

    with _Counter():
        fn()
    return total


def conv_peak_gflops(dev: torch.device, repeats: int = 5) -> tuple[float, str]:
    """Measured fp32 throughput of a large 3x3 convolution, forward plus backward (input and weight gradients),
    on this machine: the practical peak the training step is compared against. Returns (GFLOP/s, description)."""
    b, c, hw = (16, 256, 64) if dev.type == "cuda" else (8, 256, 32)
    conv = torch.nn.Conv2d(c, c, 3, padding=1).to(dev)
    x = torch.randn(b, c, hw, hw, device=dev, requires_grad=True)

    def step() -> None:
        conv(x).sum().backward()

    flops = count_flops(step)
    step()
    times = [time_once(step, dev) for _ in range(repeats)]
    return flops / median(times) / 1e9, f"conv3x3 {c}->{c} on {b}x{c}x{hw}x{hw}, fwd+bwd"


def peak_memory_subprocess(script: Path, args: list[str], timeout: float = 600) -> dict:
    """Run ``script args`` in a fresh Python process that prints one JSON line last; return it parsed.

    Each variant runs alone in its own process, so that the peak RSS (CPU) or ``torch.cuda.max_memory_allocated``
    (GPU) is that variant's peak and nothing else's.
    """
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _proc_status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def current_rss_mb() -> float:
    """Resident set size of this process now, in MiB."""
    rss = _proc_status_mb("VmRSS")
    return rss if rss is not None else max_rss_mb()


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark of this process (Linux: ``/proc/self/clear_refs``), if possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def max_rss_mb() -> float:
    """Peak resident set size of this process in MiB: ``VmHWM`` on Linux (per address space, so neither the
    parent's memory before ``exec`` nor anything before :func:`reset_peak_rss` counts), else ``ru_maxrss``."""
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def table(rows: list[dict[str, object]], title: str | None = None) -> str:
    """A plain-text table of ``rows`` (dicts with the same keys); floats get 3 significant decimals."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)

    keys = list(rows[0])
    cells = [[fmt(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = [title] if title else []
    lines.append("  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def describe_machine(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}"
    return f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def taming_step_on_diffusers(model, module, x: torch.Tensor, gen: list, disc: list, grad_clip: float | None) -> None:
    """Gradients of taming's ``VQLPIPSWithDiscriminator`` step on diffusers' ``VQModel`` (the peer of the train-step
    benchmarks), with our (identical) loss functions: reconstruction + perceptual + VQ + adaptive-weight GAN for the
    generator, hinge for the discriminator, each clipped like ours."""
    from vqgan.losses import adaptive_weight_from_grads, generator_adversarial_loss
    from vqgan.train.module import _clip

    loss_fn, discriminator = module.loss_fn, module.discriminator
    out = model(x)
    rec, vq_loss = out.sample, out.commit_loss.mean()
    last_layer = model.decoder.conv_out.weight
    nll = loss_fn.nll(x, rec).loss
    g_adv = generator_adversarial_loss(discriminator(rec), loss_fn.cfg.gan_loss)
    grads = [torch.autograd.grad(loss, last_layer, retain_graph=True)[0] for loss in (nll, g_adv)]
    d_weight = adaptive_weight_from_grads(*grads, loss_fn.cfg.adaptive_weight_max) * loss_fn.cfg.disc_weight
    (nll + vq_loss + d_weight * g_adv).backward(inputs=gen)
    _clip(gen, grad_clip)
    d = loss_fn.discriminator_loss(discriminator(x.detach()), discriminator(rec.detach()), 1.0)
    d.loss.backward(inputs=disc)
    _clip(disc, grad_clip)
