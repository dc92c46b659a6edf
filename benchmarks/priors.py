"""The three stage-2 priors compared: GPT (autoregressive codes), MaskGIT (masked codes) and the flow-matching DiT
(continuous latents), each trained for the same wall-clock budget on the CPU over one tokenizer, on the smoke plumes
(seed 004's data) and on the built-in photos; and seed 004's question, VQ-VAE against VQGAN latents for the flow.

For every prior: parameters, training steps and seconds, sampling seconds per image, and the distance between its
decoded samples and held-out real images (``vqgan.metrics.distribution.image_set_distances``: sliced Wasserstein
on 32x32 pixels and on a seeded random-conv embedding, plus per-channel colour W1; lower is better; no download).
The distances first rank, on this benchmark's own data, held-out real images against uniform noise and blurred
copies: the figure is meaningful only if real < blurred < noise there. The tokenizer's reconstructions of held-out
images (the half not used as the reference) are the floor any prior over that tokenizer can reach.

The three priors share depth, width and heads, batch, optimiser (AdamW, warm-up, constant rate) and budget; the
flow prior models the tokenizer's continuous (pre-quantization) latents, normalised with whole-set statistics,
and is decoded with and without snapping to the nearest codes. The VQGAN tokenizer adds a PatchGAN hinge loss to
the VQ-VAE's objective (no perceptual term: its VGG weights would need a download).

    python benchmarks/priors.py [--budget-seconds 60] [--clock cpu] [--tokenizer-steps 500] [--data smoke photos]
    python benchmarks/priors.py --dry-run      # seconds: every path, tiny sizes

Sample grids and ODE-trajectory figures go to ``--out`` (docs/priors/). The machine may be shared: timings are
wall-clock under whatever load there is (the header says how many threads). The last line is
``RESULT <data>_<prior>=<swd_features> ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, table  # noqa: E402

from vqgan import load_model  # noqa: E402
from vqgan.config import (  # noqa: E402
    DataConfig,
    DiscriminatorConfig,
    ExperimentConfig,
    LossConfig,
    ModelConfig,
    QuantizerConfig,
    TrainConfig,
)
from vqgan.interop.projection import channel_statistics  # noqa: E402
from vqgan.metrics.distribution import image_set_distances  # noqa: E402
from vqgan.models.prior import PriorModelConfig, build_prior  # noqa: E402
from vqgan.models.prior.latent_space import decode_latents, trajectory_images  # noqa: E402
from vqgan.viz.samples import save_image_grid  # noqa: E402


@dataclass
class Sizes:
    """Everything that ``--dry-run`` shrinks."""

    resolution: int = 32
    smoke_train: int = 768
    held_out: int = 256  # half reference, half the "held-out real" candidate of the sanity ranking
    photo_crops: int = 2048
    tok_ch: int = 32
    codebook: int = 512
    embed_dim: int = 8
    n_layer: int = 3
    n_embd: int = 96
    batch: int = 32
    num_samples: int = 128
    flow_steps: int = 8
    maskgit_steps: int = 8


DRY = Sizes(resolution=16, smoke_train=24, held_out=16, photo_crops=32, tok_ch=8, codebook=32, embed_dim=4,
            n_layer=1, n_embd=32, batch=8, num_samples=8, flow_steps=2, maskgit_steps=2)


# -- data -------------------------------------------------------------------------------------------------------
def smoke_folders(work: Path, s: Sizes) -> tuple[Path, Path]:
    """Simulate the plumes once into PNG folders (train and held-out seeds are disjoint), so that the tokenizer's
    epochs and the encodings read files instead of re-running the solver."""
    from vqgan.data.synthetic import SmokePlume
    from vqgan.viz.samples import save_images

    out = []
    for split, n, seed in (("train", s.smoke_train, 0), ("held_out", s.held_out, 1_000_003)):
        d = work / "smoke" / split
        if not (d.is_dir() and len(list(d.glob("*.png"))) == n):
            ds = SmokePlume(n, resolution=s.resolution, seed=seed)
            images = torch.stack([ds[i]["image"] for i in range(n)])
            save_images(images, d, [f"{i:05d}" for i in range(n)])
        out.append(d)
    return out[0], out[1]


def datasets(name: str, work: Path, s: Sizes):
    """``(DataConfig for the tokenizer, training set for the priors, held-out images (n, C, H, W), labels of the
    held-out images or None)``."""
    from vqgan.data import build_datasets

    if name == "smoke":
        train_dir, held_dir = smoke_folders(work, s)
        cfg = DataConfig(kind="folder", root=str(train_dir), val_root=str(held_dir), resolution=s.resolution,
                         flip=False, crop="center", val_size=s.held_out, batch_size=16)
        train, held = build_datasets(cfg, seed=0)
        images = torch.stack([held[i]["image"] for i in range(len(held))])
        return cfg, train, images, None
    from vqgan.data.builtin import BuiltinPhotos

    cfg = DataConfig(kind="builtin", resolution=s.resolution, builtin_train_crops=s.photo_crops,
                     val_size=min(s.held_out, 64), batch_size=16)
    train, _ = build_datasets(cfg, seed=0)
    # Held out: fresh crops of the training photos (another seed), with their photo as the class; the
    # validation photos are other scenes, which no prior trained on these photos is meant to produce.
    held = BuiltinPhotos("train", resolution=s.resolution, length=s.held_out, flip=False, seed=12345)
    items = [held[i] for i in range(s.held_out)]
    return cfg, train, torch.stack([it["image"] for it in items]), torch.stack([it["label"] for it in items])


def tokenizer_config(data: DataConfig, s: Sizes, gan: bool, steps: int, seconds: float, dry: bool) -> ExperimentConfig:
    steps = 2 if dry else steps
    model = ModelConfig(resolution=s.resolution, ch=s.tok_ch, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[],
                        z_channels=s.tok_ch, embed_dim=s.embed_dim, num_groups=min(16, s.tok_ch),
                        quantizer=QuantizerConfig(kind="ema", codebook_size=s.codebook))
    loss = LossConfig(reconstruction="l2", perceptual="none", disc_weight=0.0)
    disc = DiscriminatorConfig()
    if gan:
        # Hinge PatchGAN from the start of the second third of the (time-limited) run, taming's adaptive weight.
        loss = LossConfig(reconstruction="l2", perceptual="none", disc_weight=0.5, adaptive_weight=True,
                          disc_start=1 if dry else steps // 3, disc_weight_max=0.75)
        disc = DiscriminatorConfig(n_layers=2, ch=s.tok_ch)
    train = TrainConfig(max_steps=steps, max_time_minutes=seconds / 60, lr=2e-3, betas=[0.9, 0.99], warmup_steps=0 if dry else 50,
                        val_every_n_steps=steps, logger="none", diagnostics_every_n_steps=0, accelerator="cpu",
                        devices="1", keep_last_k=1)
    return ExperimentConfig(name="tokenizer", model=model, loss=loss, discriminator=disc, data=data, train=train)


def train_tokenizer(cfg: ExperimentConfig, run_dir: Path) -> tuple[torch.nn.Module, dict]:
    from vqgan import fit

    metrics = fit(cfg, run_dir)
    model, _ = load_model(run_dir / "checkpoints" / "last.ckpt")
    return model.eval(), metrics


@torch.no_grad()
def encode_all(model: torch.nn.Module, dataset, batch: int = 64) -> dict[str, torch.Tensor]:
    """Code indices, continuous latents and labels of every item of ``dataset`` (the priors' training data)."""
    idx, lat, lab = [], [], []
    for i in range(0, len(dataset), batch):
        items = [dataset[j] for j in range(i, min(len(dataset), i + batch))]
        x = torch.stack([it["image"] for it in items])
        enc = model.encode(x)
        idx.append(enc.indices)
        lat.append(enc.latents)
        lab.append(torch.stack([torch.as_tensor(it.get("label", -1)) for it in items]))
    return {"indices": torch.cat(idx), "latents": torch.cat(lat), "labels": torch.cat(lab).long()}


# -- priors -----------------------------------------------------------------------------------------------------
def prior_config(kind: str, s: Sizes, codes: dict[str, torch.Tensor], num_classes: int) -> PriorModelConfig:
    h, w = codes["indices"].shape[1:]
    return PriorModelConfig(kind=kind, vocab_size=s.codebook, token_height=h, token_width=w, n_layer=s.n_layer,
                            n_head=4, n_embd=s.n_embd, rope=kind == "gpt", num_classes=num_classes, cond_dropout=0.1,
                            latent_channels=codes["latents"].shape[1], sampler="heun", sample_steps=s.flow_steps)


def train_prior(model: torch.nn.Module, data: torch.Tensor, labels: torch.Tensor | None, seconds: float,
                batch: int, max_steps: int | None = None, clock: str = "wall") -> dict:
    """AdamW (lr 1e-3 after 50 warm-up steps, betas 0.9/0.95, clip 1) on random batches until ``seconds`` of
    ``clock`` pass: ``wall`` (wall-clock) or ``cpu`` (this process's CPU time: the same compute for every prior
    whatever else loads the machine)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    model.train()
    now = time.perf_counter if clock == "wall" else time.process_time
    steps, losses, start, wall0, cpu0 = 0, [], now(), time.perf_counter(), time.process_time()
    while now() - start < seconds and (max_steps is None or steps < max_steps):
        for group in opt.param_groups:
            group["lr"] = 1e-3 * min(1.0, (steps + 1) / 50)
        i = torch.randint(0, len(data), (batch,), generator=g)
        out = model.training_loss(data[i], None if labels is None else labels[i], generator=g)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
        losses.append(float(out.loss.detach()))
    model.eval()
    tail = losses[-max(1, len(losses) // 10):]
    return {"steps": steps, "train_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0,
            "final_loss": sum(tail) / len(tail)}


@torch.no_grad()
def sample(kind: str, model: torch.nn.Module, n: int, labels: torch.Tensor | None, s: Sizes, batch: int = 64):
    """``n`` samples (codes or latents) and the seconds per sample."""
    out, start = [], time.perf_counter()
    for i in range(0, n, batch):
        b = min(batch, n - i)
        lab = None if labels is None else labels[i : i + b]
        g = torch.Generator().manual_seed(1000 + i)
        if kind == "gpt":
            out.append(model.generate(num=b, labels=lab, generator=g))
        elif kind == "maskgit":
            out.append(model.generate(num=b, labels=lab, steps=s.maskgit_steps, generator=g))
        else:
            out.append(model.generate(num=b, labels=lab, generator=g))
    return torch.cat(out), (time.perf_counter() - start) / n


def distances(images: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    return image_set_distances(images, reference, seed=0)


def sanity_rows(held: torch.Tensor) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    """Reference = first half of the held-out images; candidates: the other half, uniform noise, blurred copies."""
    half = len(held) // 2
    ref, real = held[:half], held[half : 2 * half]
    noise = torch.rand(real.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    blurred = F.avg_pool2d(real, 5, stride=1, padding=2, count_include_pad=False)
    rows = [{"images": name, **{k: round(v, 4) for k, v in distances(x, ref).items()}}
            for name, x in (("held-out real", real), ("blurred real (5x5 box)", blurred), ("uniform noise", noise))]
    return rows, ref, real


# -- one data set ---------------------------------------------------------------------------------------------
def run_data(name: str, a, s: Sizes, work: Path, out: Path, vqgan_too: bool) -> tuple[list[dict], dict[str, float]]:
    data_cfg, train_set, held, held_labels = datasets(name, work, s)
    sanity, ref, real = sanity_rows(held)
    print(table(sanity, f"\n## {name}: sanity of the distance ({len(ref)} reference images; lower = closer)"))
    ranks = {k: "yes" if sanity[0][k] < sanity[1][k] < sanity[2][k] else "NO" for k in ("swd_pixels", "swd_features", "colour")}
    print("ranking real < blurred < noise: " + ", ".join(f"{k} {v}" for k, v in ranks.items())
          + " (swd_features, the RESULT figure, is the one that must hold)")
    save_image_grid(ref[:32], out / f"{name}_real.png", ncol=8)
    ref_labels = None if held_labels is None else held_labels[: len(ref)]
    num_classes = len(getattr(train_set, "classes", []) or [])
    n = max(len(ref), s.num_samples) if not a.dry_run else s.num_samples
    sample_labels = None if ref_labels is None else ref_labels.repeat((n + len(ref) - 1) // len(ref))[:n]

    tokenizers = [("vqvae", False)] + ([("vqgan", True)] if vqgan_too else [])
    rows, result = [], {}

    def add(row: dict) -> None:  # printed as it comes: a long run shows its progress
        rows.append(row)
        print("row:", " ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    for tok_name, gan in tokenizers:
        t0 = time.perf_counter()
        tok, tok_metrics = train_tokenizer(tokenizer_config(data_cfg, s, gan, a.tokenizer_steps, a.tokenizer_seconds, a.dry_run),
                                           work / name / f"tok_{tok_name}")
        tok_s = time.perf_counter() - t0
        codes = encode_all(tok, train_set)
        # The tokenizer's reconstructions of the other held-out half: comparable with the "held-out real" row.
        with torch.no_grad():
            rec = torch.cat([tok(real[i : i + 64]).reconstruction.clamp(-1, 1) for i in range(0, len(real), 64)])
        psnr = float(10 * torch.log10(4.0 / F.mse_loss(rec, real)))
        add({"data": name, "tokenizer": tok_name, "prior": "(reconstructions)", "params": "-",
                     "steps": tok_metrics.get("steps", 0), "train_s": round(tok_s, 1), "cpu_s": "-", "s_per_image": "-",
                     **{k: round(v, 4) for k, v in distances(rec, ref).items()}, "note": f"PSNR {psnr:.2f} dB"})
        kinds = ["gpt", "maskgit", "flow"] if tok_name == "vqvae" else ["flow"]
        for kind in kinds:
            torch.manual_seed(0)
            prior = build_prior(prior_config(kind, s, codes, num_classes))
            labels = codes["labels"] if num_classes else None
            if kind == "flow":
                lat = codes["latents"]
                mean, std, _ = channel_statistics(lat[i : i + 1024] for i in range(0, len(lat), 1024))
                prior.set_statistics(mean, std)
                train_data = codes["latents"]
            else:
                train_data = codes["indices"]
            fit = train_prior(prior, train_data, labels, a.budget_seconds, s.batch, 2 if a.dry_run else None, a.clock)
            samples, spi = sample(kind, prior, n, sample_labels, s)
            params = sum(p.numel() for p in prior.parameters())
            decodes = {"": None}
            if kind == "flow":
                decodes = {" (snap)": True, "": False}
            for suffix, snap in decodes.items():
                with torch.no_grad():
                    images = (decode_latents(tok, samples, snap=bool(snap)) if kind == "flow"
                              else torch.cat([tok.decode_codes(samples[i : i + 64]).clamp(-1, 1) for i in range(0, n, 64)]))
                d = distances(images, ref)
                grid = out / f"{name}_{tok_name}_{kind}{'_snap' if snap else ''}.png"
                save_image_grid(images[:32], grid, ncol=8)
                add({"data": name, "tokenizer": tok_name, "prior": kind + suffix, "params": params,
                             "steps": fit["steps"], "train_s": round(fit["train_s"], 1), "cpu_s": round(fit["cpu_s"], 1),
                             "s_per_image": round(spi, 4),
                             **{k: round(v, 4) for k, v in d.items()}, "note": f"loss {fit['final_loss']:.3f}"})
                result[f"{name}_{tok_name}_{kind}{'_snap' if snap else ''}"] = d["swd_features"]
            if kind == "flow":
                k = min(4, n)
                _, traj = prior.generate(num=k, labels=None if sample_labels is None else sample_labels[:k],
                                         return_trajectory=True, generator=torch.Generator().manual_seed(7))
                save_image_grid(trajectory_images(tok, traj, columns=min(6, len(traj))),
                                out / f"{name}_{tok_name}_flow_trajectory.png", ncol=min(6, len(traj)))
    return rows, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-seconds", type=float, default=60.0, help="training wall-clock per prior")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="what the prior budget counts: wall-clock, or this process's CPU seconds (fair under load)")
    ap.add_argument("--tokenizer-steps", type=int, default=500, help="training steps per tokenizer (batch 16)")
    ap.add_argument("--tokenizer-seconds", type=float, default=300.0, help="wall-clock cap per tokenizer")
    ap.add_argument("--data", nargs="+", default=["smoke", "photos"], choices=["smoke", "photos"])
    ap.add_argument("--no-vqgan", action="store_true", help="skip the VQGAN tokenizer (VQ-VAE vs VQGAN on smoke)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: on a shared machine, spinning threads cost more than they give)")
    ap.add_argument("--out", type=str, default=str(ROOT / "docs" / "priors"), help="folder for grids and results")
    ap.add_argument("--work", type=str, default=None, help="folder for tokenizer runs and the simulated plumes")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes, two steps each: checks every path in seconds")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    s = DRY if a.dry_run else Sizes()
    if a.dry_run:
        a.budget_seconds, a.tokenizer_seconds = min(a.budget_seconds, 1.0), min(a.tokenizer_seconds, 10.0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"# CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}; machine possibly shared: timings "
          f"are wall-clock under its load. Priors: {s.n_layer} layers x {s.n_embd} wide, batch {s.batch}, "
          f"{a.budget_seconds:g} {a.clock} s each; tokenizers: {a.tokenizer_steps} steps (at most {a.tokenizer_seconds:g} s) each, {s.resolution}x{s.resolution} -> "
          f"{s.resolution // 4}x{s.resolution // 4}, {s.codebook} codes of {s.embed_dim} channels.")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work) if a.work else Path(tmp)
        rows, result = [], {}
        for name in a.data:
            r, res = run_data(name, a, s, work, out, vqgan_too=name == "smoke" and not a.no_vqgan)
            rows += r
            result.update(res)
    print(table(rows, "\n## priors (distances to held-out images: lower is better)"))
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print("RESULT " + " ".join(f"{k}={v:.4f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
