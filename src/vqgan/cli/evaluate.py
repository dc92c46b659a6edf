"""Evaluation commands: ``evaluate`` (metrics with their protocol), ``visualize`` (every picture and the report),
``report`` (the HTML page of a run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vqgan.cli import command
from vqgan.cli.stage1 import eval_data
from vqgan.config import DataConfig


def _eval_loader(model, data, batch_size: int | None, max_images: int | None, whole_split: bool = False,
                 batch_idx: int = 0, checkpoint_data: DataConfig | None = None):
    """The validation loader of ``--data`` (fixed order, no augmentation; :func:`eval_data`) and its config.
    ``whole_split`` lifts ``data.val_size``; ``batch_idx`` (seed 000's ``--batch_idx``) takes group
    ``batch_idx`` of ``max_images`` items instead of the first (:func:`_batch_range`)."""
    from torch.utils.data import DataLoader, Subset

    from vqgan.data import build_datasets, collate_skip

    data = eval_data(data, checkpoint_data, model.config)
    if batch_size:
        data.val_batch_size = batch_size
    if whole_split:
        data.val_size = 2**31 - 1
    _, val = build_datasets(data)
    if batch_idx:
        val = Subset(val, _batch_range(data, len(val), batch_idx, max_images))
    elif max_images is not None and max_images < len(val):
        val = Subset(val, range(max_images))
    loader = DataLoader(val, batch_size=data.val_batch_size or data.batch_size, shuffle=False,
                        num_workers=data.num_workers, collate_fn=collate_skip)
    return loader, data


def _batch_range(data, n: int, batch_idx: int, max_images: int | None) -> range:
    """Positions of group ``batch_idx`` of an evaluation set of ``n`` items; with chunked video data
    (``data.videos_per_chunk``) a group is one chunk of videos (at most ``max_images`` of their items)."""
    from vqgan.data import pieces_per_clip

    size = max_images or n
    if data.videos_per_chunk:  # one chunk of videos, as seed 000 loads them
        size = data.videos_per_chunk * pieces_per_clip(data.frames, data.frames_as_images, data.resolution,
                                                       data.patch_size)
    if batch_idx < 0 or batch_idx * size >= n:
        raise ValueError(f"--batch-idx {batch_idx}: the evaluation set has {n} items, i.e. batches 0 to "
                         f"{(n - 1) // size} of {size}")
    start = batch_idx * size
    return range(start, min(n, start + size, start + (max_images or size)))


_ROWS = {"psnr": ("PSNR (dB)", "{:.3f}"), "ssim": ("SSIM", "{:.4f}"), "lpips": ("LPIPS", "{:.4f}"),
         "rfid": ("rFID", "{:.3f}"), "codebook_usage": ("codebook usage", "{:.2%}"), "codes_used": ("codes used", "{}"),
         "perplexity": ("perplexity", "{:.2f}"), "code_entropy_bits": ("code entropy (bits)", "{:.3f}")}


def _print_table(result) -> None:
    from rich.console import Console
    from rich.table import Column, Table

    m, p = result.metrics, result.protocol
    table = Table("metric", Column("value", justify="right"))
    for key, (label, fmt) in _ROWS.items():
        if key in m:
            table.add_row(label, fmt.format(m[key]))
    console = Console(file=sys.stdout)  # looked up now: sys.stdout may have been replaced
    console.print(f"[bold]reconstruction metrics[/bold] of {p['checkpoint']}: {p['num_images']} images, "
                  f"{p['resolution'][0]}x{p['resolution'][1]}, device {p['device']}")
    console.print(table)
    console.print(f"[bold]protocol[/bold]: {p['preprocessing']}")
    for key in ("lpips", "rfid"):
        if key in p:
            console.print(f"[bold]{key}[/bold]: " + ", ".join(f"{k}={v}" for k, v in p[key].items()))


@command("evaluate")
def evaluate(
    ckpt: str, data: DataConfig | str | None = None, output: str | None = None, metrics: str | None = None,
    lpips_weights: str | None = None, lpips_net: str = "vgg", fid_weights: str | None = None,
    fid_feature: int = 2048, batch_size: int | None = None, max_images: int | None = None,
    whole_split: bool = True, device: str = "auto", progress: bool = True, json_: bool = False,
) -> int:
    """Reconstruction metrics of a tokenizer over a whole evaluation set (PSNR, SSIM, LPIPS, rFID, codebook) with their protocol.

    Args:
        output: folder for evaluation.json (metrics and protocol).
        metrics: comma-separated: psnr,ssim,lpips,fid (codebook statistics always). Default: psnr,ssim plus lpips /
            fid when their weight files are given.
        lpips_weights: torchvision VGG16 (vgg16-397923af.pth) or AlexNet (alexnet-owt-7be5be79.pth) state dict file.
        lpips_net: LPIPS backbone: vgg or alex.
        fid_weights: torch-fidelity Inception-v3 weights file (weights-inception-2015-12-05-6726825d.pth).
        fid_feature: Inception feature layer for rFID (2048 is standard).
        batch_size: evaluation batch size (default: data.val_batch_size).
        max_images: evaluate only the first N images (default: all).
        whole_split: evaluate every image of the validation split; false keeps data.val_size (the training-time cap).
        json_: print the result as JSON instead of a table.
    """
    from vqgan.metrics.evaluate import METRIC_NAMES, evaluate_tokenizer
    from vqgan.metrics.fid import ReconstructionFID
    from vqgan.metrics.lpips import LPIPSMetric
    from vqgan.models.io import load_model

    if metrics:
        wanted = {m.strip().lower() for m in metrics.split(",") if m.strip()}
        unknown = sorted(wanted - set(METRIC_NAMES) - {"rfid", "codebook"})
        if unknown:
            raise ValueError(f"--metrics: unknown {unknown}; choose from {', '.join(METRIC_NAMES)}")
    else:  # lpips and fid when their weight files are given
        wanted = {m for m, weights in (("lpips", lpips_weights), ("fid", fid_weights)) if weights is not None}
    # Weight files first: a missing file must cost a second, not an evaluation.
    lpips = LPIPSMetric(lpips_net, lpips_weights) if "lpips" in wanted else None
    fid = ReconstructionFID(fid_weights, fid_feature) if wanted & {"fid", "rfid"} else None
    model, exp = load_model(ckpt)
    loader, data_cfg = _eval_loader(model, data, batch_size, max_images, whole_split,
                                    checkpoint_data=exp.data if exp else None)
    result = evaluate_tokenizer(model, loader, data_cfg, device, lpips=lpips, fid=fid, progress=progress,
                                checkpoint=str(ckpt))
    text = json.dumps(result.to_dict(), indent=2)
    if output:
        Path(output).mkdir(parents=True, exist_ok=True)
        (Path(output) / "evaluation.json").write_text(text)
    if json_:
        print(text)
        return 0
    _print_table(result)
    if output:
        print(f"written {Path(output) / 'evaluation.json'}")
    return 0


def run_visualize(ckpt: str, output: str | Path, run_dir: str | Path | None, data: DataConfig | str | None = None,
                  num_images: int = 64, device: str = "cpu", tsne_points: int = 600, report: bool = True,
                  batch_idx: int = 0) -> Path | None:
    """Load ``ckpt``, take the first ``num_images`` evaluation images, write every picture into ``output`` and
    (with ``report``) ``output/report.html``; returns the report's path."""
    import torch

    from vqgan.config import dump_config
    from vqgan.models.io import load_model
    from vqgan.viz.report import report_for_run
    from vqgan.viz.visualize import visualize_model

    model, exp = load_model(ckpt)
    model = model.to(device)
    loader, _ = _eval_loader(model, data, None, num_images, batch_idx=batch_idx,
                             checkpoint_data=exp.data if exp else None)
    batches = [b["image"] for b in loader if "image" in b]
    if not batches:
        raise ValueError("no readable images to visualize")
    images = torch.cat(batches)[:num_images]
    out = Path(output)
    visualize_model(model, images, out, run_dir=run_dir, tsne_points=tsne_points)
    if not report:
        return None
    if run_dir is None:  # the checkpoint's own config stands in for the run folder's
        if exp is not None:
            dump_config(exp, out / "config.yaml")
        return report_for_run(out, figures_dir=out, output=out / "report.html", title=f"vqgan {Path(ckpt).name}")
    return report_for_run(run_dir, figures_dir=out, output=out / "report.html")


@command("visualize")
def visualize(
    ckpt: str, output: str, run_dir: str | None = None, data: DataConfig | str | None = None,
    num_images: int = 64, batch_idx: int = 0, tsne_points: int = 600, report: bool = True,
    device: str = "auto",
) -> int:
    """Every picture of a tokenizer: reconstructions, latent projections, codebook atlas and usage, token maps, interpolation, video, training diagnostics; and the HTML report.

    Args:
        output: output folder for the pictures and report.html.
        run_dir: training run folder, for its diagnostics, config and metrics (default: inferred from
            RUN_DIR/checkpoints/*.ckpt).
        num_images: evaluation images used for the pictures.
        batch_idx: which batch of --num-images evaluation images to draw (seed 000's --batch_idx); with chunked
            video data (data.videos_per_chunk), which chunk of videos.
        tsne_points: encoder outputs shown by t-SNE (seeded subsample).
        report: also write OUTPUT/report.html.
    """
    folder = Path(ckpt).resolve().parent  # RUN_DIR/checkpoints/NAME.ckpt, when RUN_DIR has a config.yaml
    is_run = folder.name == "checkpoints" and (folder.parent / "config.yaml").is_file()
    inferred = run_dir or (folder.parent if is_run else None)
    if run_dir is None and inferred is not None:
        print(f"run folder: {inferred}")
    written = run_visualize(ckpt, output, inferred, data, num_images, device, tsne_points, report, batch_idx)
    print(f"pictures in {output}" + (f"; report {written}" if written else ""))
    return 0


@command("report")
def report(
    run_dir: str, figures: str | None = None, output: str | None = None, visualize: bool = True,
    screenshot: str | None = None, device: str = "auto",
) -> int:
    """Write one self-contained HTML page of a run: config, metrics and every picture (images embedded).

    Args:
        run_dir: training run folder.
        figures: folder written by `vqgan visualize` (default: RUN_DIR/visualizations; drawn from
            RUN_DIR/checkpoints/last.ckpt when missing).
        output: HTML file (default: RUN_DIR/report.html).
        visualize: run visualize first when the figures folder has no figures.json and the run has a checkpoint.
        screenshot: also save a PNG screenshot of the page (needs chromium).
    """
    from vqgan.viz.report import report_for_run
    from vqgan.viz.report import screenshot as take_screenshot

    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"--run-dir {run}: no such folder")
    figures_dir = Path(figures) if figures else run / "visualizations"
    ckpt = run / "checkpoints" / "last.ckpt"
    if visualize and not (figures_dir / "figures.json").is_file() and ckpt.is_file():
        print(f"no pictures in {figures_dir}: drawing them from {ckpt}")
        run_visualize(str(ckpt), figures_dir, run, None, device=device, report=False)
    path = report_for_run(run, figures_dir, output)
    print(f"report {path}")
    if screenshot:
        print(f"screenshot {take_screenshot(path, screenshot)}")
    return 0
