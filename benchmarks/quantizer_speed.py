"""Forward + backward time of our EMA vector quantizer against vector-quantize-pytorch's ``VectorQuantize`` with the
same features: EMA codebook (decay 0.99), k-means initialisation, dead-code restarts (threshold 2 hits), commitment
weight 0.25, straight-through gradients, 16 x 256 vectors of dimension 64, 1024 codes.

Both are warmed up (k-means runs on the first call), then timed in interleaved rounds (ours, theirs, theirs, ours,
...) so that a contended machine slows both alike; the table shows medians and the last line the ratio of medians
``RESULT ratio_vs_vqpytorch=ours/theirs``. vector-quantize-pytorch's rotation trick is turned off (it is not the
straight-through estimator, and ours doesn't have it); both restart dead codes on every training step.

    python benchmarks/quantizer_speed.py [--repeats 30] [--threads 1] [--profile]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import describe_machine, device, interleaved, median, table  # noqa: E402

from vqgan.quantizers import VectorQuantizer  # noqa: E402

BATCH, TOKENS, DIM, CODES = 16, 256, 64, 1024


def build(dev: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    from vector_quantize_pytorch import VectorQuantize

    torch.manual_seed(0)
    ours = VectorQuantizer(
        DIM, CODES, ema=True, decay=0.99, beta=0.25, kmeans_init=True, kmeans_iters=10, dead_code_threshold=2.0
    ).to(dev)
    theirs = VectorQuantize(
        dim=DIM, codebook_size=CODES, decay=0.99, commitment_weight=0.25, kmeans_init=True, kmeans_iters=10,
        threshold_ema_dead_code=2, rotation_trick=False,
    ).to(dev)
    return ours.train(), theirs.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: least sensitive to contention)")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of ours")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dev = device()
    ours, theirs = build(dev)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(BATCH, TOKENS, DIM, generator=g).to(dev)  # channel-last, as vector-quantize-pytorch takes it

    def step_ours() -> None:
        xi = x.detach().requires_grad_()
        out = ours(xi.transpose(1, 2))  # our interface is channel-first (B, D, *spatial)
        (out.quantized.square().mean() + out.loss).backward()

    def step_theirs() -> None:
        xi = x.detach().requires_grad_()
        quantized, _, loss = theirs(xi)
        (quantized.square().mean() + loss.sum()).backward()

    times = interleaved({"ours": step_ours, "vector-quantize-pytorch": step_theirs}, dev, args.repeats, warmup=3)
    med = {k: median(v) for k, v in times.items()}
    rows = [
        {"quantizer": k, "median_ms": 1e3 * med[k], "min_ms": 1e3 * min(v), "max_ms": 1e3 * max(v), "repeats": len(v)}
        for k, v in times.items()
    ]
    title = (
        f"EMA VQ forward+backward, {BATCH}x{TOKENS} vectors of dim {DIM}, {CODES} codes, k-means init, restarts "
        f"({describe_machine(dev)})"
    )
    print(table(rows, title=title))
    if args.profile:
        from torch.profiler import profile

        with profile() as prof:
            for _ in range(10):
                step_ours()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    print(f"RESULT ratio_vs_vqpytorch={med['ours'] / med['vector-quantize-pytorch']:.3f}")


if __name__ == "__main__":
    main()
