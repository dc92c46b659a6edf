"""The GPU benchmark: taming's f16 VQGAN (seeds 001/002, ``configs/ffhq_vqgan_f16.yaml``) trained at 256x256 with
LPIPS and the discriminator on, ours against diffusers' ``VQModel`` with the same losses, on one GPU.

Measured, each in one run:

* images/s and peak memory of a full training step (autoencoder forward, L1 + LPIPS + VQ + hinge GAN with taming's
  adaptive weight, generator backward, clipping, Adam; discriminator forward on real and reconstructed images,
  backward, Adam) in fp32 (TF32 matmuls and convolutions, as ``fit`` sets on CUDA), bf16 autocast, and bf16
  autocast with ``torch.compile``; for ours (:meth:`VQGANModule.compute_gradients`, the trainer's code) and for
  diffusers' ``VQModel`` built with the same widths, depth, attention and codebook (equal parameter counts, checked)
  with the loss written as taming's ``VQLPIPSWithDiscriminator`` (two ``autograd.grad`` calls, then the backward
  pass; compiled with ``donated_buffer=False``, without which its retained backward is refused). The ratio
  diffusers/ours of the step time is printed for each precision.
* the largest batch that fits (ours, bf16): doubling until out of memory, then bisecting once;
* the achieved TFLOP/s of our bf16 step (matmul, convolution and attention FLOPs counted by
  ``torch.utils.flop_counter``'s formulas) against the GPU's dense bf16 peak (a table of known GPUs, or
  ``--peak-tflops``);
* GPT prior sampling (taming-sized transformer over the 16x16 token map, 1024 codes) in tokens/s with and without
  the key/value cache.

LPIPS uses a randomly initialised VGG16 backbone (nothing is downloaded; the cost is the same as with the ImageNet
weights). cuDNN autotuning (``torch.backends.cudnn.benchmark``) is on: the shapes are fixed.

``--dry-run`` runs the same code on the CPU with tiny sizes (32x32, ch 8, batch 2, one timed step, compile
through the ``eager`` backend), so that the script is tested without a device; its numbers mean nothing.

    python benchmarks/gpu.py [--dry-run] [--time-limit 330] [--out DIR]

The last line is ``RESULT ...``; with ``--out`` the same numbers are also written to ``DIR/gpu.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    ROOT,
    conv_peak_gflops,
    count_flops,
    describe_machine,
    median,
    sync,
    table,
    taming_step_on_diffusers,
)

from vqgan.config import ExperimentConfig, ModelConfig, load_config, to_dict  # noqa: E402
from vqgan.models import build_model  # noqa: E402
from vqgan.models.prior import GPTPrior, PriorModelConfig  # noqa: E402
from vqgan.train.module import VQGANModule  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s, without sparsity) from the vendors' data sheets, by device-name substring.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "L40S": 362.0,
                    "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0}
PRECISIONS = ("fp32", "bf16", "bf16+compile")


@dataclass
class Sizes:
    resolution: int
    ch: int
    batch: int
    warmup: int
    repeats: int
    max_batch: int
    gpt: PriorModelConfig
    gpt_batch: int
    compile_backend: str
    groups: int = 32


def sizes(dry_run: bool) -> Sizes:
    if dry_run:
        gpt = PriorModelConfig(kind="gpt", vocab_size=64, token_height=4, token_width=4, n_layer=2, n_head=2, n_embd=32)
        return Sizes(32, 8, 2, 1, 1, 2, gpt, 2, "eager", groups=8)
    # taming's FFHQ transformer is 24 layers wide 1664; 1024 wide keeps the uncached loop within the time budget.
    gpt = PriorModelConfig(kind="gpt", vocab_size=1024, token_height=16, token_width=16, n_layer=24, n_head=16,
                           n_embd=1024)
    return Sizes(256, 128, 8, 3, 10, 1024, gpt, 16, "inductor")


def experiment(s: Sizes) -> ExperimentConfig:
    """configs/ffhq_vqgan_f16.yaml with the adversarial term on from the first step (random LPIPS backbone)."""
    cfg = load_config(ROOT / "configs" / "ffhq_vqgan_f16.yaml")
    cfg.model.resolution = cfg.data.resolution = s.resolution
    cfg.model.ch, cfg.model.num_groups = s.ch, s.groups
    cfg.loss.random_backbone = True
    cfg.loss.disc_start = 0
    return cfg


def diffusers_model(cfg: ModelConfig) -> torch.nn.Module:
    """diffusers' VQModel with taming's architecture of ``cfg``, attention blocks at ``attn_resolutions`` included."""
    from diffusers import VQModel as DVQModel

    n = len(cfg.ch_mult)
    res = [cfg.resolution // 2**i for i in range(n)]
    attn = [r in cfg.attn_resolutions for r in res]
    return DVQModel(
        in_channels=cfg.in_channels, out_channels=cfg.in_channels,
        down_block_types=tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn),
        up_block_types=tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn)),
        block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult), layers_per_block=cfg.num_res_blocks,
        latent_channels=cfg.z_channels, vq_embed_dim=cfg.embed_dim, num_vq_embeddings=cfg.quantizer.codebook_size,
        norm_num_groups=cfg.num_groups, sample_size=cfg.resolution, mid_block_add_attention=cfg.mid_attention,
    )


class Step:
    """One training step of ``impl`` ("ours" or "diffusers") at one precision, with its own weights and Adam."""

    def __init__(self, impl: str, precision: str, cfg: ExperimentConfig, batch: int, dev: torch.device, s: Sizes):
        torch.manual_seed(0)
        self.impl, self.dev = impl, dev
        self.module = VQGANModule(to_dict(cfg))
        if impl == "diffusers":  # in place of ours, so that the peak memory counts one autoencoder
            self.module.model = diffusers_model(cfg.model)
        self.module.to(dev).train()
        self.model = self.module.model
        self.cfg = cfg
        self.gen = [p for p in self.model.parameters() if p.requires_grad]
        self.disc = self.module.discriminator_parameters()
        fused = dev.type == "cuda"
        self.opt = torch.optim.Adam([{"params": self.gen}, {"params": self.disc}], lr=cfg.train.lr,
                                    betas=tuple(cfg.train.betas), fused=fused)
        self.autocast = precision.startswith("bf16")
        self.no_donation = contextlib.nullcontext()
        if precision.endswith("compile"):
            self.model.compile(backend=s.compile_backend)
            if impl == "diffusers":
                # taming's loss retains the decoder's backward for its two autograd.grad calls, which a compiled
                # backward with donated buffers refuses.
                self.no_donation = torch._functorch.config.patch(donated_buffer=False)
        g = torch.Generator().manual_seed(0)
        self.x = (torch.rand(batch, 3, cfg.model.resolution, cfg.model.resolution, generator=g) * 2 - 1).to(dev)

    def __call__(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with self.no_donation, torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.autocast):
            if self.impl == "diffusers":
                self._taming_loss_on_diffusers()
            else:
                self.module.compute_gradients(self.x, None, 1.0)
        self.opt.step()

    def _taming_loss_on_diffusers(self) -> None:
        taming_step_on_diffusers(self.model, self.module, self.x, self.gen, self.disc, self.cfg.train.grad_clip)


def free(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def run_variant(step: Step, s: Sizes, dev: torch.device) -> dict[str, float]:
    """Warm-up (compilation, cuDNN autotuning), then the median of ``repeats`` timed steps and the peak memory."""
    for _ in range(s.warmup):
        step()
    sync(dev)
    times = []
    for _ in range(s.repeats):
        t0 = time.perf_counter()
        step()
        sync(dev)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
    return {"s_per_step": median(times), "peak_gib": peak}


def fits(cfg: ExperimentConfig, batch: int, dev: torch.device, s: Sizes) -> bool:
    """Whether one bf16 training step of ours at ``batch`` runs without running out of device memory."""
    step = None
    try:
        step = Step("ours", "bf16", cfg, batch, dev, s)
        step()
        step()  # Adam's state exists from the first step on
        sync(dev)
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        del step
        free(dev)


def largest_batch(cfg: ExperimentConfig, dev: torch.device, s: Sizes, deadline: float) -> tuple[int, bool]:
    """Largest batch (ours, bf16) found by doubling from ``s.batch`` and one bisection; ``(batch, exact)`` where
    ``exact`` is False when the search stopped at ``s.max_batch`` or at the deadline before any failure."""
    good, bad = 0, None
    b = s.batch
    while b <= s.max_batch and time.monotonic() < deadline:
        if fits(cfg, b, dev, s):
            good, b = b, 2 * b
        else:
            bad = b
            break
    if bad is not None and good and time.monotonic() < deadline:
        mid = (good + bad) // 2
        if mid > good and fits(cfg, mid, dev, s):
            good = mid
    return good, bad is not None


def gpu_peak_tflops(dev: torch.device, override: float | None) -> tuple[float, str]:
    if override:
        return override, "given by --peak-tflops"
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        for key, peak in BF16_PEAK_TFLOPS.items():
            if key in name:
                return peak, f"{key} dense bf16 data-sheet peak"
        return float("nan"), f"unknown GPU {name!r}: pass --peak-tflops"
    gflops, desc = conv_peak_gflops(dev, repeats=1)
    return gflops / 1000, f"CPU: measured fp32 {desc}"


def gpt_sampling(s: Sizes, dev: torch.device) -> dict[str, float]:
    """Tokens/s of GPT sampling (bf16 autocast, one warm-up map) with and without the key/value cache."""
    torch.manual_seed(0)
    prior = GPTPrior(s.gpt).to(dev).eval()
    out: dict[str, float] = {}
    for cache in (True, False):
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            prior.generate(num=s.gpt_batch, use_cache=cache, top_k=100)
            sync(dev)
            t0 = time.perf_counter()
            prior.generate(num=s.gpt_batch, use_cache=cache, top_k=100)
            sync(dev)
        out["cache" if cache else "no_cache"] = s.gpt_batch * s.gpt.num_tokens / (time.perf_counter() - t0)
    del prior
    free(dev)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the same code on the CPU with tiny sizes (numbers mean nothing)")
    p.add_argument("--time-limit", type=float, default=330.0, help="seconds; later sections are skipped past it")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    p.add_argument("--out", type=Path, default=None, help="also write the numbers to OUT/gpu.json")
    args = p.parse_args()
    start = time.monotonic()
    deadline = start + args.time_limit
    if not args.dry_run and not torch.cuda.is_available():
        # `make bench` runs every benchmark: say why there are no numbers rather than fail the others.
        print("benchmarks/gpu.py measures a CUDA GPU and none is visible; --dry-run runs its code on the CPU")
        print("RESULT skipped=no_cuda_device")
        return
    dev = torch.device("cpu" if args.dry_run else "cuda")
    s = sizes(args.dry_run)
    if dev.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32, as fit sets on CUDA
        torch.backends.cudnn.benchmark = True
    cfg = experiment(s)
    with torch.device("meta"):  # same architecture: same parameter count (built without memory)
        n_ours = sum(q.numel() for q in build_model(cfg.model).parameters())
        n_theirs = sum(q.numel() for q in diffusers_model(cfg.model).parameters())
    assert n_ours == n_theirs, f"architectures differ: {n_ours} vs {n_theirs} parameters"
    print(f"GPU benchmark{' (dry run: CPU, tiny sizes, numbers mean nothing)' if args.dry_run else ''}: "
          f"{describe_machine(dev)}; taming f16 VQGAN (configs/ffhq_vqgan_f16.yaml) at {s.resolution}x{s.resolution}, "
          f"ch {s.ch}, batch {s.batch}, {n_ours / 1e6:.1f} M parameters, LPIPS(vgg, random backbone) + PatchGAN with "
          "adaptive weight", flush=True)

    rows, results, skipped = [], {}, []

    def train(precision: str) -> None:
        for impl in ("ours", "diffusers"):
            # A compiled variant is started only with time left for its compilation (about a minute on a GPU).
            margin = 90.0 if precision.endswith("compile") and not args.dry_run else 0.0
            if time.monotonic() + margin > deadline:
                skipped.append(f"{impl}/{precision}")
                continue
            step = Step(impl, precision, cfg, s.batch, dev, s)
            r = run_variant(step, s, dev)
            del step
            free(dev)
            results[f"{impl}/{precision}"] = r
            rows.append({"impl": impl, "precision": precision, "ms/step": 1000 * r["s_per_step"],
                         "images/s": s.batch / r["s_per_step"], "peak GiB": r["peak_gib"]})
            print(f"{impl} {precision}: {s.batch / r['s_per_step']:.2f} images/s, peak {r['peak_gib']:.2f} GiB",
                  flush=True)

    # Cheapest first, compilation last, so that a short time limit still gives the main numbers.
    train("fp32")
    train("bf16")

    # Achieved TFLOP/s of our bf16 step against the bf16 peak.
    step = Step("ours", "bf16", cfg, s.batch, dev, s)
    flops = count_flops(step)
    del step
    free(dev)
    peak, peak_desc = gpu_peak_tflops(dev, args.peak_tflops)
    bf16 = results.get("ours/bf16")
    achieved = flops / bf16["s_per_step"] / 1e12 if bf16 else float("nan")
    print(f"ours bf16: {flops / 1e9 / s.batch:.1f} GFLOP/image, {achieved:.2f} TFLOP/s achieved, "
          f"{achieved / peak:.3f} of the peak ({peak:.1f} TFLOP/s, {peak_desc})", flush=True)

    if time.monotonic() < deadline:
        tok = gpt_sampling(s, dev)
        print(f"GPT sampling ({s.gpt.n_layer} layers, {s.gpt.n_embd} wide, {s.gpt.num_tokens} tokens, batch "
              f"{s.gpt_batch}, bf16): {tok['cache']:.0f} tokens/s with the cache, {tok['no_cache']:.0f} without "
              f"({tok['cache'] / tok['no_cache']:.2f}x)", flush=True)
    else:
        tok = {"cache": float("nan"), "no_cache": float("nan")}
        skipped.append("gpt sampling")

    if time.monotonic() < deadline:
        max_batch, exact = largest_batch(cfg, dev, s, deadline)
        print(f"largest batch that fits (ours, bf16): {max_batch}{'' if exact else ' (search limit, not memory)'}",
              flush=True)
    else:
        max_batch, exact = 0, False
        skipped.append("largest batch")

    train("bf16+compile")
    print(table(rows, title="training step"))
    ratios = {}
    for precision in PRECISIONS:
        o, d = results.get(f"ours/{precision}"), results.get(f"diffusers/{precision}")
        if o and d:
            ratios[precision] = d["s_per_step"] / o["s_per_step"]
            print(f"{precision}: diffusers/ours step time {ratios[precision]:.3f}")
    if skipped:
        print(f"skipped for the {args.time_limit:.0f} s limit: {', '.join(skipped)}")

    def ips(key: str) -> float:
        return s.batch / results[key]["s_per_step"] if key in results else float("nan")

    summary = {
        "dry_run": args.dry_run, "device": describe_machine(dev), "resolution": s.resolution, "batch": s.batch,
        "images_per_s": {k: ips(k) for k in results}, "peak_gib": {k: v["peak_gib"] for k, v in results.items()},
        "ratio_vs_diffusers": ratios, "tflops": achieved, "peak_fraction": achieved / peak,
        "max_batch": max_batch, "max_batch_exact": exact, "gpt_tokens_per_s": tok, "skipped": skipped,
        "seconds": time.monotonic() - start,
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu.json").write_text(json.dumps(summary, indent=2))
    print(
        f"RESULT dry_run={int(args.dry_run)} images_per_s_fp32={ips('ours/fp32'):.2f} "
        f"images_per_s_bf16={ips('ours/bf16'):.2f} images_per_s_bf16_compile={ips('ours/bf16+compile'):.2f} "
        + " ".join(f"ratio_vs_diffusers_{k.replace('+', '_')}={v:.3f}" for k, v in ratios.items())
        + f" tflops_bf16={achieved:.3f} peak_fraction={achieved / peak:.4f} max_batch={max_batch} "
        f"gpt_tokens_per_s_cache={tok['cache']:.1f} gpt_tokens_per_s_no_cache={tok['no_cache']:.1f} "
        f"seconds={summary['seconds']:.0f}"
    )


if __name__ == "__main__":
    main()
