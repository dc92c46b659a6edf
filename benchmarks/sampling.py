"""Sampling speed of the stage-2 priors: GPT with and without the key/value cache, and MaskGIT, for 8x8 and 16x16
token maps.

The "no cache" path recomputes the whole prefix at every step, which is how the sampling loops of minGPT/nanoGPT
(``generate``) and taming-transformers (``sample``) work; it runs through the same model, so the ratio isolates the
cache. Repetitions are interleaved (cache, no cache, MaskGIT, cache, ...) and medians reported, because the machine
may be shared. Both GPT paths must produce identical tokens from the same seed; the table says whether they did.

    python benchmarks/sampling.py [--reps 3] [--batch 4] [--threads 1]

The last line is ``RESULT kv_speedup=<16x16 ratio> ...``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vqgan.models.prior import GPTPrior, MaskGITPrior, PriorModelConfig


def timed(fn) -> tuple[float, float, torch.Tensor]:
    """Wall-clock and CPU seconds of ``fn()`` (on a shared machine the CPU time is the steadier of the two)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4, help="token maps sampled at once")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is steadiest on a shared box)")
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--maskgit-steps", type=int, default=8)
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 16])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"# torch {torch.__version__}, {a.threads} thread(s), batch {a.batch}, {a.n_layer} layers x {a.n_embd} wide, "
          f"vocab {a.vocab}, class-conditional with guidance scale 2 (2x batch), {a.reps} interleaved repetitions")
    rows, ratios = [], {}
    for side in a.sizes:
        common = dict(vocab_size=a.vocab, token_height=side, token_width=side, n_layer=a.n_layer, n_head=a.n_head,
                      n_embd=a.n_embd, num_classes=10, rope=True)
        torch.manual_seed(0)
        gpt = GPTPrior(PriorModelConfig(kind="gpt", **common)).eval()
        torch.manual_seed(0)
        mg = MaskGITPrior(PriorModelConfig(kind="maskgit", **{**common, "rope": False})).eval()
        labels = torch.arange(a.batch) % 10
        kw = dict(labels=labels, cfg_scale=2.0, top_k=100)
        runs = {
            "gpt, KV cache": lambda gpt=gpt, kw=kw: gpt.generate(
                use_cache=True, generator=torch.Generator().manual_seed(0), **kw),
            "gpt, no cache (nanoGPT/taming loop)": lambda gpt=gpt, kw=kw: gpt.generate(
                use_cache=False, generator=torch.Generator().manual_seed(0), **kw),
            f"maskgit, {a.maskgit_steps} steps": lambda mg=mg, kw=kw: mg.generate(
                steps=a.maskgit_steps, generator=torch.Generator().manual_seed(0), **kw),
        }
        for fn in runs.values():  # warm-up
            if side <= 8:
                fn()
        walls: dict[str, list[float]] = {k: [] for k in runs}
        cpus: dict[str, list[float]] = {k: [] for k in runs}
        outs: dict[str, torch.Tensor] = {}
        for _ in range(a.reps):
            for name, fn in runs.items():
                w, c, outs[name] = timed(fn)
                walls[name].append(w)
                cpus[name].append(c)
        nocache = "gpt, no cache (nanoGPT/taming loop)"
        same = torch.equal(outs["gpt, KV cache"], outs[nocache])
        n_tok = a.batch * side * side
        wall = {k: statistics.median(v) for k, v in walls.items()}
        cpu = {k: statistics.median(v) for k, v in cpus.items()}
        for name in runs:
            rows.append((f"{side}x{side}", name, n_tok / wall[name], n_tok / cpu[name], 1000 * cpu[name] / a.batch,
                         wall[nocache] / wall[name], cpu[nocache] / cpu[name], same if name.startswith("gpt") else ""))
        ratios[side] = (wall[nocache] / wall["gpt, KV cache"], cpu[nocache] / cpu["gpt, KV cache"])
    print(f"{'map':6s} {'method':38s} {'tok/s wall':>11s} {'tok/s cpu':>10s} {'cpu ms/map':>11s} "
          f"{'x wall':>7s} {'x cpu':>7s} {'same tokens':>12s}")
    for m, name, tps, tpc, ms, rw, rc, same in rows:
        print(f"{m:6s} {name:38s} {tps:11.0f} {tpc:10.0f} {ms:11.1f} {rw:6.1f}x {rc:6.1f}x {str(same):>12s}")
    print("# x wall / x cpu: speed relative to the no-cache loop, from median wall-clock and median CPU time")
    key = 16 if 16 in ratios else max(ratios)
    extra = " ".join(
        f"kv_speedup_{s}x{s}={ratios[s][0]:.1f} kv_speedup_cpu_{s}x{s}={ratios[s][1]:.1f}" for s in sorted(ratios) if s != key
    )
    print(f"RESULT kv_speedup={ratios[key][0]:.1f} kv_speedup_cpu={ratios[key][1]:.1f} {extra}".strip())


if __name__ == "__main__":
    main()
