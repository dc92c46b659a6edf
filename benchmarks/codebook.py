"""Codebook health under one budget: the same encoder, decoder, data, optimiser and number of steps for every
quantizer, trained with ``vqgan.train.fit`` on the built-in photos (32x32 crops, 8x8 tokens, ~1024 codes).

Rows (all read 256-channel latents from the same ``quant_conv``):

* ``vanilla``: taming's setting, plain VQ with 256-dim codes learned by gradients, uniform init, no k-means, no
  restarts (beta on the commitment term; taming's misplaced beta is not reproduced);
* ``default``: ``QuantizerConfig()``'s defaults, the library's default quantizer;
* ``vq+``: plain VQ with the codebook-health options (factorized 32-dim l2-normalised codes, k-means, restarts);
* ``fsq`` (levels 8,5,5,5 = 1000 codes), ``lfq`` (10 bits), ``simvq`` (1024 codes), ``rvq`` (2 EMA stages of 1024
  codes: twice the bits, listed for reference).

After the last step: ``usage`` (fraction of codes used) and ``perplexity`` of the trained model in eval mode over
1,024 random training crops (65,536 tokens, 64 per code, so that a rare code is told from a dead one; no restarts
happen in eval mode); PSNR, SSIM and ``val_usage`` on the fixed validation grid of the built-in data (120 images,
7,680 tokens); ``train_usage``, the fraction of codes hit during the last 50 training steps (the run's codebook
diagnostics); ``restarts`` during training; ``seconds``, the wall-clock time of the run. Two runs go at a time, one per core, each with one thread (small convolutions scale badly across
threads, and two single-threaded runs keep both cores busy).

Each quantizer is trained with ``--seeds`` seeds (default 2: the model's initialisation and the data order change
with the seed); the rows are means and the PSNR of every seed is listed. A single seed is not enough: at 500 steps
the same quantizer's PSNR moves by up to 0.8 dB between seeds, as much as the differences between quantizers.

    python benchmarks/codebook.py [--steps 500] [--seeds 2] [--only vanilla default fsq] [--workers 2] [--out DIR --reuse]

The last line is ``RESULT default_usage=... vanilla_usage=... default_psnr=... vanilla_psnr=... psnr_gain=...``
(means over the seeds).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table  # noqa: E402

from vqgan.config import (  # noqa: E402
    DataConfig,
    ExperimentConfig,
    LossConfig,
    ModelConfig,
    QuantizerConfig,
    TrainConfig,
)


def quantizers() -> dict[str, QuantizerConfig]:
    """The compared quantizers (see the module docstring)."""
    default = dataclasses.replace(QuantizerConfig(), codebook_size=1024)
    return {
        "vanilla": QuantizerConfig(kind="vq", codebook_size=1024, codebook_dim=None, kmeans_init=False, dead_code_threshold=0.0),
        "default": default,
        "vq+": QuantizerConfig(
            kind="vq", codebook_size=1024, codebook_dim=32, l2_normalize=True, kmeans_init=True, dead_code_threshold=0.5,
            usage_decay=0.95,
        ),
        "fsq": QuantizerConfig(kind="fsq", levels=[8, 5, 5, 5]),
        "lfq": QuantizerConfig(kind="lfq", codebook_size=1024),
        "simvq": QuantizerConfig(kind="simvq", codebook_size=1024),
        "rvq": dataclasses.replace(default, kind="residual", num_stages=2, stage_kind="ema"),
    }


def experiment(name: str, quantizer: QuantizerConfig, steps: int, seed: int) -> ExperimentConfig:
    """A CPU-sized taming autoencoder (the quick-start layout, narrower) trained with L1 only."""
    return ExperimentConfig(
        name=f"codebook-{name}",
        model=ModelConfig(
            resolution=32, ch=16, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[], mid_attention=False,
            z_channels=64, embed_dim=256, num_groups=8, quantizer=quantizer,
        ),
        loss=LossConfig(reconstruction="l1", perceptual="none", disc_weight=0.0),
        data=DataConfig(kind="builtin", resolution=32, batch_size=32, builtin_scale=0.5),
        train=TrainConfig(
            max_steps=steps, lr=1e-3, betas=[0.9, 0.99], warmup_steps=20, val_every_n_steps=steps,
            log_every_n_steps=min(50, steps), logger="none", diagnostics_every_n_steps=min(50, steps), seed=seed, grad_clip=1.0,
        ),
    )


def run_one(
    name: str, quantizer: QuantizerConfig, steps: int, seed: int, out_dir: str, reuse: bool = False,
    run_name: str | None = None,
) -> dict[str, object]:
    """Train one quantizer in this (worker) process and return its row. With ``reuse``, a finished run of the same
    length in ``out_dir/name`` is evaluated instead of trained again (to resume an interrupted benchmark)."""
    import logging

    import torch

    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    from vqgan.metrics.codebook import load_diagnostics
    from vqgan.train.fit import fit

    run_dir = Path(out_dir) / (run_name or name)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = experiment(name, quantizer, steps, seed)
    previous = run_dir / "metrics.json"
    if reuse and previous.is_file():
        metrics = json.loads(previous.read_text())
        if metrics.get("steps") != steps:
            raise SystemExit(f"{run_dir} holds a finished run of {metrics.get('steps')} steps, not {steps}: "
                             "use another --out")
        seconds = float(metrics["train_seconds"])
    else:
        with open(run_dir / "log.txt", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            start = time.perf_counter()
            # With --reuse an interrupted run continues from its last checkpoint (resuming is exact on one device).
            metrics = fit(cfg, run_dir, resume="last" if reuse else None)
            seconds = time.perf_counter() - start
    diag = load_diagnostics(run_dir)
    usage = usage_on_training_crops(run_dir, cfg)
    k = math.prod(quantizer.levels) if quantizer.kind == "fsq" else quantizer.codebook_size
    return {
        "quantizer": name,
        "codes": k,
        "usage": usage["usage"],
        "perplexity": usage["perplexity"],
        "val_usage": float(metrics["codebook_usage"]),
        "psnr": float(metrics["psnr"]),
        "ssim": float(metrics["ssim"]),
        "train_usage": float(diag["usage"][-1]),
        "restarts": int(diag["restarts"].sum()),
        "seconds": round(seconds, 1),
    }


def usage_on_training_crops(run_dir: Path, cfg: ExperimentConfig, images: int = 1024) -> dict[str, float]:
    """Codebook usage and perplexity of the trained model (eval mode: no restarts) over ``images`` random training
    crops, i.e. 64 tokens per code for 1024 codes (the built-in validation grid has only 120 images, 7,680 tokens,
    too few to tell a rare code from a dead one)."""
    import torch
    from torch.utils.data import DataLoader

    from vqgan.data import build_datasets
    from vqgan.metrics import CodebookUsage
    from vqgan.train.module import VQGANModule

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    module = VQGANModule(ckpt["hyper_parameters"]["config"])
    module.load_state_dict(ckpt["state_dict"], strict=False)  # the frozen loss networks are not saved
    model = module.model.eval()
    train_set, _ = build_datasets(cfg.data, cfg.train.seed + 1)
    torch.manual_seed(cfg.train.seed + 1)
    metric = CodebookUsage(model.quantize.codebook_size, model.quantize.num_stages)
    seen = 0
    with torch.no_grad():
        for batch in DataLoader(train_set, batch_size=256, shuffle=True):
            metric.update(model.encode(batch["image"]).indices)
            seen += batch["image"].shape[0]
            if seen >= images:
                break
    stats = metric.compute()
    return {"usage": float(stats["usage"]), "perplexity": float(stats["perplexity"])}


def summarize(name: str, runs: list[dict[str, object]]) -> dict[str, object]:
    """One table row: the mean over seeds of every measured column, and the PSNR of each seed (the spread tells a
    real difference between quantizers from seed noise, about +-0.4 dB at 500 steps)."""
    mean = {k: sum(float(r[k]) for r in runs) / len(runs) for k in runs[0] if k not in ("quantizer", "codes")}
    row: dict[str, object] = {"quantizer": name, "codes": runs[0]["codes"]}
    row.update({k: mean[k] for k in ("usage", "perplexity", "val_usage", "psnr")})
    row["psnr per seed"] = " ".join(f"{float(r['psnr']):.2f}" for r in runs)
    row.update({k: mean[k] for k in ("ssim", "train_usage", "restarts", "seconds")})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500, help="training steps per quantizer")
    parser.add_argument("--seeds", type=int, default=2, help="runs per quantizer (seeds 0..N-1); rows are means")
    parser.add_argument("--only", nargs="*", default=None, help="subset of rows (RESULT needs vanilla and default)")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--out", type=str, default=None, help="folder for the runs (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="evaluate finished runs found in --out, train the rest")
    args = parser.parse_args()

    all_q = quantizers()
    names = list(all_q) if not args.only else list(dict.fromkeys(args.only))
    unknown = [n for n in names if n not in all_q]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(all_q)}")
    out = args.out or tempfile.mkdtemp(prefix="vqgan-codebook-bench-")
    seeds = list(range(args.seeds))
    print(f"{len(names)} quantizers x {len(seeds)} seeds x {args.steps} steps, {args.workers} at a time; runs in {out}",
          flush=True)
    start = time.perf_counter()
    runs: dict[str, list[dict[str, object]]] = {n: [] for n in names}
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
        futures = {
            (n, s): pool.submit(run_one, n, all_q[n], args.steps, s, out, args.reuse, f"{n}-seed{s}")
            for s in seeds for n in names
        }
        for (n, s), f in futures.items():
            runs[n].append(f.result())
            print(f"  {n} seed {s}: {runs[n][-1]['psnr']:.2f} dB ({runs[n][-1]['seconds']} s)", flush=True)
    rows = {n: summarize(n, runs[n]) for n in names}
    print()
    print(table(list(rows.values()), title=f"Codebook health at {args.steps} steps, mean of {len(seeds)} seeds"))
    print(f"total {time.perf_counter() - start:.0f} s")
    if "default" not in rows or "vanilla" not in rows:
        return
    d, v = rows["default"], rows["vanilla"]
    print(
        f"RESULT default_usage={d['usage']:.4f} vanilla_usage={v['usage']:.4f} "
        f"default_psnr={d['psnr']:.3f} vanilla_psnr={v['psnr']:.3f} psnr_gain={d['psnr'] - v['psnr']:.3f} "
        f"seeds={len(seeds)}"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
