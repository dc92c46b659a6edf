"""Images per second, peak memory and achieved GFLOP/s of a full VQGAN training step, against the same step built
on diffusers' ``VQModel``.

One step = autoencoder forward, generator loss (L1 + LPIPS + VQ + hinge GAN with taming's adaptive weight),
generator backward, clipping and Adam; then the discriminator's forward on real and reconstructed images, its hinge
loss, backward, clipping and Adam. The architecture is taming's (ch 64, ch_mult 1,2,2,4, one residual block per
level, attention in the middle block) at 32x32, batch 16 on CPU (128x128 on GPU); diffusers' ``VQModel`` is built
with the same widths, depth, latent channels and codebook, so both autoencoders have the same parameters and FLOPs.

* ours: :meth:`vqgan.train.VQGANModule.compute_gradients` (the code the trainer runs) and the module's own
  optimizer; the adaptive weight is computed from gradients at the reconstruction (LPIPS and the discriminator
  are back-propagated once, see ``vqgan/train/step.py``).
* diffusers: ``diffusers.VQModel`` with the loss written as in taming's ``VQLPIPSWithDiscriminator`` (what a user
  of diffusers would write): two ``autograd.grad`` calls for the adaptive weight, then the full backward pass.

Both share the LPIPS network (random backbone: the cost is the same as with ImageNet weights), the PatchGAN and
the loss functions. Memory is measured per variant in a fresh process (CPU: ``ru_maxrss`` growth during the steps;
GPU: ``torch.cuda.max_memory_allocated`` growth). GFLOP/s counts convolutions and matmuls (FlopCounterMode) of the
whole step and compares them with a large fp32 convolution timed on the same machine.

    python benchmarks/train_step.py [--repeats 7] [--batch 16] [--resolution 32]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    conv_peak_gflops,
    count_flops,
    current_rss_mb,
    describe_machine,
    device,
    interleaved,
    max_rss_mb,
    median,
    peak_memory_subprocess,
    reset_peak_rss,
    table,
    taming_step_on_diffusers,
)

from vqgan.config import (  # noqa: E402
    DataConfig,
    DiscriminatorConfig,
    ExperimentConfig,
    LossConfig,
    ModelConfig,
    QuantizerConfig,
    TrainConfig,
    to_dict,
)
from vqgan.train.module import VQGANModule  # noqa: E402

VARIANTS = ("ours", "ours_channels_last", "ours_ckpt", "diffusers")


def experiment(resolution: int, ch: int, checkpointing: bool = False, channels_last: bool = False) -> ExperimentConfig:
    """taming f16-style model scaled to fit: a plain VQ codebook (diffusers has no EMA codebook), no k-means."""
    model = ModelConfig(
        resolution=resolution, ch=ch, ch_mult=[1, 2, 2, 4], num_res_blocks=1, attn_resolutions=[], mid_attention=True,
        z_channels=4 * ch, embed_dim=4 * ch,
        quantizer=QuantizerConfig(kind="vq", codebook_size=1024, kmeans_init=False, dead_code_threshold=0.0),
    )
    if checkpointing:
        model.gradient_checkpointing = True
    return ExperimentConfig(
        model=model,
        loss=LossConfig(reconstruction="l1", perceptual="lpips", lpips_net="vgg", random_backbone=True,
                        disc_weight=0.8, disc_start=0, adaptive_weight=True),
        discriminator=DiscriminatorConfig(n_layers=3, ch=64),
        data=DataConfig(resolution=resolution),
        train=TrainConfig(lr=1e-4, grad_clip=1.0, channels_last=channels_last),
    )


def diffusers_model(cfg: ModelConfig) -> torch.nn.Module:
    """diffusers' VQModel with the architecture of ``cfg`` (taming's, which diffusers ports)."""
    from diffusers import VQModel as DVQModel

    n = len(cfg.ch_mult)
    return DVQModel(
        in_channels=cfg.in_channels, out_channels=cfg.in_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult), layers_per_block=cfg.num_res_blocks,
        latent_channels=cfg.z_channels, vq_embed_dim=cfg.embed_dim, num_vq_embeddings=cfg.quantizer.codebook_size,
        norm_num_groups=cfg.num_groups, sample_size=cfg.resolution, mid_block_add_attention=cfg.mid_attention,
    )


class Variant:
    """One training step of one implementation, with its own parameters and optimizer."""

    def __init__(self, name: str, cfg: ExperimentConfig, dev: torch.device, seed: int = 0):
        torch.manual_seed(seed)
        self.name = name
        self.module = VQGANModule(to_dict(cfg)).to(dev)
        self.module.train()
        self.cfg = cfg
        if name == "diffusers":
            self.model = diffusers_model(cfg.model).to(dev).train()
        else:
            self.model = self.module.model
        gen = [p for p in self.model.parameters() if p.requires_grad]
        disc = self.module.discriminator_parameters()
        if name == "diffusers":  # torch's default Adam, as a user of diffusers would write it
            betas = tuple(cfg.train.betas)
            self.opt = torch.optim.Adam([{"params": gen}, {"params": disc}], lr=cfg.train.lr, betas=betas)
        else:  # the optimizer the trainer uses
            self.opt = self.module.configure_optimizers()[0][0]
        self.gen, self.disc = gen, disc
        g = torch.Generator().manual_seed(seed)
        self.x = (torch.rand(BATCH, 3, cfg.model.resolution, cfg.model.resolution, generator=g) * 2 - 1).to(dev)
        if cfg.train.channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        if self.name == "diffusers":
            self._diffusers_gradients()
        else:
            self.module.compute_gradients(self.x, None, 1.0)
        self.opt.step()

    def _diffusers_gradients(self) -> None:
        taming_step_on_diffusers(self.model, self.module, self.x, self.gen, self.disc, self.cfg.train.grad_clip)


def saved_activation_mb(v: Variant) -> float:
    """MiB of tensors the autoencoder's forward pass keeps for its backward pass (what gradient checkpointing
    trades for recomputation), counted exactly with ``saved_tensors_hooks`` (one count per storage). Unlike the
    process's peak memory this does not depend on the allocator, so it is comparable across machines."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.nn.Parameter):
            st = t.untyped_storage()
            storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = v.model(v.x)
    del out
    return sum(storages.values()) / 2**20


def build(name: str, args: argparse.Namespace, dev: torch.device) -> Variant:
    cl = args.channels_last or name == "ours_channels_last"
    cfg = experiment(args.resolution, args.ch, checkpointing=name == "ours_ckpt", channels_last=cl)
    return Variant(name, cfg, dev)


def measure_memory(name: str, args: argparse.Namespace) -> None:
    """Child process: build one variant, run steps, print its peak memory growth as one JSON line."""
    dev = device()
    v = build(name, args, dev)
    v.step()  # optimizer state and allocator caches exist from here on
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            v.step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        base = current_rss_mb()
        reset_peak_rss()
        for _ in range(2):
            v.step()
        peak = max_rss_mb() - base
    print(json.dumps({"variant": name, "peak_mb": peak}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--batch", type=int, default=None, help="default 16 (CPU and GPU)")
    p.add_argument("--resolution", type=int, default=None, help="default 32 on CPU, 128 on GPU")
    p.add_argument("--ch", type=int, default=64)
    p.add_argument("--channels-last", action="store_true", help="every 'ours' variant in channels_last")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--memory-child", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant memory processes")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = device()
    args.batch = args.batch or 16
    args.resolution = args.resolution or (128 if dev.type == "cuda" else 32)
    global BATCH
    BATCH = args.batch
    if dev.type == "cpu":
        torch.set_float32_matmul_precision("highest")
    if args.memory_child:
        measure_memory(args.memory_child, args)
        return

    print(f"training step, {describe_machine(dev)}; batch {args.batch} at {args.resolution}x{args.resolution}, "
          f"ch {args.ch}, ch_mult 1,2,2,4, LPIPS(vgg) + hinge GAN with adaptive weight")
    variants = {n: build(n, args, dev) for n in VARIANTS}
    n_params = {n: sum(p.numel() for p in v.model.parameters()) for n, v in variants.items()}
    assert n_params["ours"] == n_params["diffusers"], n_params  # same architecture
    flops = {n: count_flops(v.step) for n, v in variants.items()}
    activations = {n: saved_activation_mb(v) for n, v in variants.items()}
    peak, peak_desc = conv_peak_gflops(dev)
    times = interleaved({n: v.step for n, v in variants.items()}, dev, repeats=args.repeats, warmup=1)
    peak2, _ = conv_peak_gflops(dev)  # again after the steps: the machine may be shared, keep the better one
    peak = max(peak, peak2)

    memory: dict[str, float] = {}
    if not args.no_memory:
        extra = ["--batch", str(args.batch), "--resolution", str(args.resolution), "--ch", str(args.ch)]
        extra += ["--channels-last"] if args.channels_last else []
        extra += ["--threads", str(args.threads)] if args.threads else []
        for n in VARIANTS:
            memory[n] = peak_memory_subprocess(Path(__file__), [*extra, "--memory-child", n])["peak_mb"]

    rows = []
    for n in VARIANTS:
        t = median(times[n])
        rows.append({
            "variant": n,
            "ms/step": 1000 * t,
            "images/s": args.batch / t,
            "GFLOP/step": flops[n] / 1e9,
            "GFLOP/s": flops[n] / t / 1e9,
            "peak MB": memory.get(n, float("nan")),
            "MB/image": memory.get(n, float("nan")) / args.batch,
            "AE activations MB/image": activations[n] / args.batch,
        })
    print(table(rows))
    print(f"conv peak: {peak:.1f} GFLOP/s ({peak_desc})")
    theirs = median(times["diffusers"])
    # Our best setting on this machine (default memory format or channels_last) is the headline; both are printed.
    best = min(("ours", "ours_channels_last"), key=lambda n: median(times[n]))
    ours = median(times[best])
    ratio, ratio_default = theirs / ours, theirs / median(times["ours"])
    fraction = flops[best] / ours / 1e9 / peak
    ck = median(times["ours_ckpt"]) / median(times["ours"])
    if memory:
        print(f"gradient checkpointing: {ck:.2f}x the step time, {memory['ours_ckpt'] / memory['ours']:.2f}x the peak "
              f"memory, {activations['ours_ckpt'] / activations['ours']:.2f}x the autoencoder's saved activations")
        mem = f" memory_ratio_vs_diffusers={memory['ours'] / memory['diffusers']:.3f}"
    else:
        mem = ""
    print(f"RESULT ratio_vs_diffusers={ratio:.3f} peak_fraction={fraction:.3f}{mem} best={best} "
          f"ratio_default_format={ratio_default:.3f} images_per_s={args.batch / ours:.2f} "
          f"checkpointing_time_ratio={ck:.3f} "
          f"checkpointing_activation_ratio={activations['ours_ckpt'] / activations['ours']:.3f}")


BATCH = 16

if __name__ == "__main__":
    main()
