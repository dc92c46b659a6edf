"""Codebook plots: an evaluation set's usage histogram and seed 002's training diagnostics. Figures use
matplotlib's object-oriented API (no pyplot: safe in threads) at a fixed dpi: ``figsize=(w, h)`` is a PNG of
``(100 w) x (100 h)``."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from vqgan.metrics.codebook import codebook_stats, load_diagnostics

DPI = 100


@dataclass
class FigureRecord:
    """A written picture and how the report shows it."""

    key: str
    title: str
    path: str
    section: str
    caption: str = ""

    def __post_init__(self):
        self.path = str(self.path)  # the writers return Paths


def new_figure(width: float, height: float, ncols: int = 1, nrows: int = 1, **subplots):
    """A Figure (tight layout, no pyplot) and its axes (an array when there are several)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="tight")
    return fig, fig.subplots(nrows, ncols, **subplots)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG of exactly its size in pixels (no tight bounding box)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def _step_ticks(ax, step: np.ndarray) -> None:
    """At most 8 x ticks labelled with the training step of the record (column) under them."""
    ticks = np.linspace(0, len(step) - 1, min(len(step), 8)).round().astype(int)
    ax.set(xticks=ticks, xticklabels=[str(int(step[t])) for t in ticks], xlabel="step")


# -- evaluation-set codebook usage ---------------------------------------------------------------------------
def plot_usage_histogram(counts: np.ndarray, path: str | Path, title: str = "codebook usage") -> Path:
    """Hits per code: by code index (left) and sorted by frequency on a log scale (right), with usage and
    perplexity in the title."""
    counts = np.asarray(counts, dtype=np.float64)
    k = counts.size
    stats = codebook_stats(torch.as_tensor(counts))
    fig, (a, b) = new_figure(10, 3.6, ncols=2)
    a.bar(np.arange(k), counts, width=1.0, color="tab:blue")
    a.set(xlabel="code index", ylabel="hits", xlim=(-0.5, k - 0.5))
    b.plot(np.arange(1, k + 1), np.maximum(np.sort(counts)[::-1], 0.5), color="tab:orange",
           drawstyle="steps-mid")
    b.set(yscale="log", xlabel="rank", ylabel="hits (log)")
    b.axhline(counts.sum() / k, color="gray", ls="--", lw=1, label="uniform")
    b.legend(loc="upper right")
    fig.suptitle(f"{title}: {int(stats['used'])}/{k} codes used ({100 * float(stats['usage']):.1f}%), "
                 f"perplexity {float(stats['perplexity']):.1f}")
    return save_figure(fig, path)


def save_code_histogram(tokens, data_histogram, path: str | Path) -> Path:
    """A prior's samples against its data: share of every code (sorted by data frequency) in each. ``tokens``
    and ``data_histogram`` are arrays or tensors (on any device)."""
    q = torch.as_tensor(data_histogram).cpu().double().flatten()
    counts = torch.bincount(torch.as_tensor(tokens).cpu().flatten().long(), minlength=q.numel())[: q.numel()]
    order = q.argsort(descending=True, stable=True)
    fig, ax = new_figure(6, 2.5)
    ax.plot((q / q.sum().clamp_min(1))[order], label="data", lw=1)
    ax.plot((counts / counts.sum().clamp_min(1))[order], label="samples", lw=1, alpha=0.8)
    ax.set(xlabel="code (sorted by data frequency)", ylabel="share")
    ax.legend()
    return save_figure(fig, path)


# -- training diagnostics (seed 002) ------------------------------------------------------------------------
def plot_usage_over_time(diag: dict[str, np.ndarray], path: str | Path) -> Path:
    """Fraction of codes used and perplexity at every record; dead codes and restarts when recorded."""
    step = diag["step"]
    fig, (a, b) = new_figure(10, 3.6, ncols=2)
    a.plot(step, 100 * np.asarray(diag["usage"], dtype=float), marker="o", ms=3, color="tab:blue")
    a.set(xlabel="step", ylabel="codes used in window (%)", ylim=(0, None), title="codebook usage")
    if "dead_codes" in diag:
        a2 = a.twinx()
        a2.plot(step, diag["dead_codes"], color="tab:red", ls="--", lw=1)
        a2.set_ylabel("dead codes", color="tab:red")
    b.plot(step, diag["perplexity"], marker="o", ms=3, color="tab:green")
    b.set(xlabel="step", ylabel="perplexity (codes)", title="perplexity")
    if "restarts" in diag and np.asarray(diag["restarts"]).sum() > 0:
        b2 = b.twinx()
        width = max(1, np.diff(step).min() if len(step) > 1 else 1)
        b2.bar(step, diag["restarts"], color="tab:purple", alpha=0.3, width=width)
        b2.set_ylabel("restarted codes", color="tab:purple")
    return save_figure(fig, path)


def plot_code_grad_norms(diag: dict[str, np.ndarray], path: str | Path) -> Path:
    """Seed 002's "code_grad": per-code gradient norm at the last record (codes sorted by it) and, over time,
    the fraction of codes that receive any gradient."""
    g = np.asarray(diag["code_grad_norms"], dtype=np.float64)
    step, codes = diag["step"], np.arange(g.shape[1])
    fig, (a, b) = new_figure(10, 3.6, ncols=2)
    a.bar(codes, g[-1], width=1.0, color="tab:blue", label=f"step {int(step[-1])}")
    a.plot(codes, g.mean(0), color="tab:orange", lw=1, label="mean over records")
    a.set(xlabel="code index", ylabel="gradient / update norm", title="per-code gradient norm")
    a.legend(loc="upper right", fontsize=8)
    b.plot(step, 100 * (g > 0).mean(1), marker="o", ms=3, color="tab:red")
    b.set(ylim=(0, 105), xlabel="step", ylabel="codes with non-zero gradient (%)",
          title="codes receiving gradient")
    return save_figure(fig, path)


def plot_grad_heatmap(diag: dict[str, np.ndarray], path: str | Path, max_codes: int = 512) -> Path:
    """Seed 002's "grad_heatmap": gradient norm of every code (rows) at every record (columns), log colour
    scale; zero gradients are white."""
    g = np.asarray(diag["code_grad_norms"], dtype=np.float64)[:, :max_codes].T
    step = diag["step"]
    fig, ax = new_figure(8, 5)
    pos = g[g > 0]
    norm = LogNorm(vmin=max(pos.min(), pos.max() * 1e-6), vmax=pos.max()) if pos.size else None
    im = ax.imshow(np.ma.masked_less_equal(g, 0), aspect="auto", interpolation="nearest", cmap="viridis",
                   norm=norm, extent=(-0.5, len(step) - 0.5, g.shape[0] - 0.5, -0.5))
    _step_ticks(ax, step)
    ax.set(ylabel="code index", title="code gradient norms (white: no gradient)")
    fig.colorbar(im, ax=ax, label="norm")
    return save_figure(fig, path)


def plot_code_norms(diag: dict[str, np.ndarray], path: str | Path, max_lines: int = 64) -> Path:
    """Seed 002's "code_norm": the L2 norm of codes over time (the most used codes in colour, the rest in grey)
    and the final norm against total hits per code."""
    norms = np.asarray(diag["code_norms"], dtype=np.float64)
    step, k = diag["step"], norms.shape[1]
    counts = np.asarray(diag.get("code_counts", np.zeros_like(norms)), dtype=np.float64).sum(0)
    fig, (a, b) = new_figure(10, 3.6, ncols=2)
    order = np.argsort(-counts)
    used = order[: min(max_lines, k)]
    for j in order[::-1][: max(0, min(max_lines, k - len(used)))]:
        a.plot(step, norms[:, j], color="0.75", lw=0.6)
    for r, j in enumerate(used):
        a.plot(step, norms[:, j], lw=0.9, color=f"C{r % 10}" if counts[j] > 0 else "0.6")
    a.plot(step, np.median(norms, 1), color="black", lw=2, label="median")
    a.set(xlabel="step", ylabel="code L2 norm", title="code norms over time")
    a.legend(loc="upper left", fontsize=8)
    b.scatter(counts, norms[-1], s=8, c=np.where(counts > 0, "tab:blue", "tab:red"))
    b.set(xscale="symlog", xlabel="total hits (symlog)", ylabel=f"norm at step {int(step[-1])}",
          title="norm vs usage (red: never used)")
    return save_figure(fig, path)


def plot_code_norm_histogram(diag: dict[str, np.ndarray], path: str | Path, bins: int = 40) -> Path:
    """Seed 002's "code_norm_time": the histogram of code norms at every record, as a time x norm heatmap
    with the median overlaid."""
    norms = np.asarray(diag["code_norms"], dtype=np.float64)
    step = diag["step"]
    lo = float(norms.min())
    hi = max(float(norms.max()), lo + 1e-6)
    hist = np.stack([np.histogram(row, bins=bins, range=(lo, hi))[0] for row in norms], 1).astype(float)
    fig, ax = new_figure(8, 4)
    im = ax.imshow(hist, aspect="auto", origin="lower", cmap="magma", interpolation="nearest",
                   extent=(-0.5, len(step) - 0.5, lo, hi))
    ax.plot(np.arange(len(step)), np.median(norms, 1), color="cyan", lw=1.5, label="median")
    _step_ticks(ax, step)
    ax.set(ylabel="code L2 norm", title="histogram of code norms over time")
    ax.legend(loc="upper left", fontsize=8)
    fig.colorbar(im, ax=ax, label="codes")
    return save_figure(fig, path)


# (key, title, plot, file, caption, the array it needs)
DIAGNOSTICS = (
    ("usage_over_time", "Codebook usage and perplexity over training", plot_usage_over_time,
     "diag_usage_perplexity", "fraction of codes hit in each recording window, dead codes, perplexity and "
     "restarts", "step"),
    ("code_grad_norms", "Code gradient norms", plot_code_grad_norms, "diag_code_grad",
     "gradient (or EMA update) norm of every code; few codes receiving gradient means collapse",
     "code_grad_norms"),
    ("grad_heatmap", "Gradient heatmap", plot_grad_heatmap, "diag_grad_heatmap", "codes x time",
     "code_grad_norms"),
    ("code_norms", "Code norms", plot_code_norms, "diag_code_norm",
     "norms of the most used codes over time, and final norm against usage", "code_norms"),
    ("code_norm_hist", "Code norm histogram over time", plot_code_norm_histogram, "diag_code_norm_time", "",
     "code_norms"),
)


def diagnostics_figures(run_dir: str | Path, output_dir: str | Path) -> list[FigureRecord]:
    """Every diagnostics plot of a run (those whose arrays were recorded) written under ``output_dir``."""
    diag = load_diagnostics(run_dir)
    out = Path(output_dir)
    return [FigureRecord(key, title, plot(diag, out / f"{file}.png"), "Training diagnostics", caption)
            for key, title, plot, file, caption, needs in DIAGNOSTICS if needs in diag]
