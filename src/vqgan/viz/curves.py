"""Loss curves of a training run (seed 002) from its TensorBoard event files under ``RUN_DIR/logs``, for the
report; a step logged in several files (a resumed run) keeps its latest value."""

from pathlib import Path

import numpy as np

from vqgan.viz.plots import FigureRecord, new_figure, save_figure

Scalars = dict[str, tuple[np.ndarray, np.ndarray]]
# One panel per quantity: (title, y label, [(tag, label)], log scale).
PANELS: tuple[tuple[str, str, tuple[tuple[str, str], ...], bool], ...] = (
    ("Reconstruction", "loss", (("train/rec", "train"), ("val/rec", "validation")), True),
    ("Perceptual", "loss", (("train/perceptual", "train"),), True),
    ("VQ (codebook + commitment)", "loss", (("train/vq", "train"),), True),
    ("Generator (adversarial)", "loss", (("train/g_adv", "train"),), False),
    ("Discriminator", "loss", (("train/d_loss", "train"),), False),
    ("Codebook usage", "fraction of codes",
     (("train/usage", "train batch"), ("val/codebook_usage", "validation")), False),
)


def read_scalars(run_dir: str | Path) -> Scalars:
    """Every scalar logged to TensorBoard under ``RUN_DIR/logs``: ``{tag: (steps, values)}``, sorted by step.
    Raises ``FileNotFoundError`` without event files (a run with ``--train.logger none`` or ``wandb``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = Path(run_dir, "logs")
    files = sorted(logs.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
    if not files:
        # W&B's offline files (RUN_DIR/wandb) have no public reader outside W&B's own tools (`wandb sync`).
        wandb = " (this run logged to W&B: see its curves there)" if Path(run_dir, "wandb").is_dir() else ""
        raise FileNotFoundError(f"no TensorBoard event files under {logs}{wandb}: the loss curves are read "
                                "from the run's TensorBoard logs (train with --train.logger tensorboard, "
                                "the default)")
    merged: dict[str, dict[int, float]] = {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})  # 0: keep every point
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            merged.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return {tag: (np.array(sorted(points), dtype=np.int64), np.array([points[s] for s in sorted(points)]))
            for tag, points in merged.items()}


def plot_loss_curves(scalars: Scalars, path: str | Path) -> Path:
    """The :data:`PANELS` in a 2x3 grid; a quantity the run did not log (no discriminator yet, no perceptual
    loss) says so in its panel."""
    fig, axes = new_figure(12, 6, ncols=3, nrows=2)
    for ax, (title, ylabel, tags, log_scale) in zip(axes.flat, PANELS, strict=True):
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        logged = [(tag, label) for tag, label in tags if tag in scalars]
        for tag, label in logged:
            steps, values = scalars[tag]
            ax.plot(steps, values, marker="o" if len(steps) < 20 else None, ms=3, lw=1, label=label)
            if log_scale and np.all(values > 0):
                ax.set_yscale("log")
        if logged:
            ax.legend(loc="best", fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged in this run", ha="center", va="center", transform=ax.transAxes,
                    color="gray")
    return save_figure(fig, path)


def loss_curve_figures(run_dir: str | Path, out: str | Path) -> list[FigureRecord]:
    """``OUT/loss_curves.png`` from the run's logs, as a report figure."""
    scalars = read_scalars(run_dir)
    shown = sorted(tag for _, _, tags, _ in PANELS for tag, _ in tags if tag in scalars)
    if not shown:
        raise FileNotFoundError(f"the TensorBoard logs of {run_dir} hold none of the loss curves' scalars")
    last = max(int(scalars[t][0][-1]) for t in shown)
    path = plot_loss_curves(scalars, Path(out) / "loss_curves.png")
    return [FigureRecord("loss_curves", "Loss curves", str(path), "Training",
                         f"from the run's TensorBoard logs, up to step {last}: {', '.join(shown)}")]


def plot_scalar_curves(scalars: Scalars, tags: list[str], path: str | Path, ylabel: str = "loss") -> Path:
    """Some of :func:`read_scalars`' curves on one panel (e.g. a prior's ``train/loss`` and ``val/loss``); a
    curve of many points is drawn with its running mean over 5% of them."""
    fig, ax = new_figure(6, 3)
    for tag in tags:
        steps, values = scalars[tag]
        k, color = max(1, len(values) // 20), None
        if k > 1:
            color = ax.plot(steps, values, lw=0.6, alpha=0.35)[0].get_color()
            values, steps = np.convolve(values, np.ones(k) / k, mode="valid"), steps[k - 1 :]
        ax.plot(steps, values, marker="o" if len(steps) < 20 else None, ms=3, lw=1.2, label=tag, color=color)
    ax.set(xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
