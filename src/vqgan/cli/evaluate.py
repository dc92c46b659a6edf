"""Evaluation commands: ``evaluate`` (metrics with their protocol), ``visualize`` (every picture and the report),
``report`` (the HTML page of a run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vqgan.cli import command, resolve_device
from vqgan.cli.stage1 import _set_data_defaults_from_ckpt


def _data_arguments(p, argv: list[str]) -> None:
    from vqgan.config import DataConfig

    p.add_class_arguments(DataConfig, "data", help="data options (default: the checkpoint's validation data)")
    ckpt = next((argv[i + 1] for i, x in enumerate(argv[:-1]) if x == "--ckpt"), None)
    if ckpt:
        _set_data_defaults_from_ckpt(p, ckpt)


def _eval_loader(model, data_ns, batch_size: int | None, max_images: int | None, whole_split: bool = False,
                 batch_idx: int = 0):
    """The validation loader of ``--data`` (fixed order, no augmentation), optionally truncated; and its config.
    ``whole_split`` lifts ``data.val_size`` (which caps validation during training) to take every image.
    ``batch_idx`` (seed 000's ``--batch_idx``) takes the ``batch_idx``-th group of ``max_images`` items instead of
    the first; with chunked video data (``data.videos_per_chunk``) a group is one chunk: the items of
    ``videos_per_chunk`` validation videos (at most ``max_images`` of them)."""
    from torch.utils.data import DataLoader, Subset

    from vqgan.config import DataConfig, ExperimentConfig, from_dict
    from vqgan.data import build_datasets, collate_skip

    data = from_dict(DataConfig, data_ns.as_dict())
    if batch_size:
        data.val_batch_size = batch_size
    if whole_split:
        data.val_size = 2**31 - 1
    cfg = ExperimentConfig(model=model.config, data=data)
    _, val = build_datasets(cfg.data, cfg.train.seed)
    if batch_idx:
        val = Subset(val, _batch_range(data, len(val), batch_idx, max_images))
    elif max_images is not None and max_images < len(val):
        val = Subset(val, range(max_images))
    loader = DataLoader(val, batch_size=data.val_batch_size or data.batch_size, shuffle=False,
                        num_workers=data.num_workers, collate_fn=collate_skip)
    return loader, data


def _batch_range(data, n: int, batch_idx: int, max_images: int | None) -> range:
    """Positions of group ``batch_idx`` of an evaluation set of ``n`` items (see :func:`_eval_loader`)."""
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


def _print_table(result, console_file=None) -> None:
    from rich.console import Console
    from rich.table import Table

    m, p = result.metrics, result.protocol
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [("PSNR (dB)", "psnr", "{:.3f}"), ("SSIM", "ssim", "{:.4f}"), ("LPIPS", "lpips", "{:.4f}"),
            ("rFID", "rfid", "{:.3f}"), ("codebook usage", "codebook_usage", "{:.2%}"),
            ("codes used", "codes_used", "{}"), ("perplexity", "perplexity", "{:.2f}"),
            ("code entropy (bits)", "code_entropy_bits", "{:.3f}")]
    for label, key, fmt in rows:
        if key in m:
            table.add_row(label, fmt.format(m[key]))
    console = Console(file=console_file or sys.stdout)  # looked up now: sys.stdout may have been replaced
    console.print(f"[bold]reconstruction metrics[/bold] of {p['checkpoint']}: {p['num_images']} images, "
                  f"{p['resolution'][0]}x{p['resolution'][1]}, device {p['device']}")
    console.print(table)
    console.print(f"[bold]protocol[/bold]: {p['preprocessing']}")
    for key in ("lpips", "rfid"):
        if key in p:
            console.print(f"[bold]{key}[/bold]: " + ", ".join(f"{k}={v}" for k, v in p[key].items()))


@command("evaluate", "Reconstruction metrics of a tokenizer over a whole evaluation set (PSNR, SSIM, LPIPS, rFID, codebook) with their protocol.")
class Evaluate:
    @staticmethod
    def build(p, argv):
        p.add_argument("--ckpt", type=str, required=True, help="training checkpoint (.ckpt) or pretrained folder")
        _data_arguments(p, argv)
        p.add_argument("--output", type=str, default=None, help="folder for evaluation.json (metrics and protocol)")
        p.add_argument("--metrics", type=str, default=None,
                       help="comma-separated: psnr,ssim,lpips,fid (codebook statistics always). Default: psnr,ssim plus "
                            "lpips / fid when their weight files are given")
        p.add_argument("--lpips-weights", type=str, default=None,
                       help="torchvision VGG16 (vgg16-397923af.pth) or AlexNet (alexnet-owt-7be5be79.pth) state dict file")
        p.add_argument("--lpips-net", type=str, default="vgg", help="LPIPS backbone: vgg or alex")
        p.add_argument("--fid-weights", type=str, default=None,
                       help="torch-fidelity Inception-v3 weights file (weights-inception-2015-12-05-6726825d.pth)")
        p.add_argument("--fid-feature", type=int, default=2048, help="Inception feature layer for rFID (2048 is standard)")
        p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size (default: data.val_batch_size)")
        p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images (default: all)")
        p.add_argument("--whole-split", type=bool, default=True,
                       help="evaluate every image of the validation split; false keeps data.val_size (the training-time cap)")
        p.add_argument("--device", type=str, default="auto", help="cpu, cuda, or auto")
        p.add_argument("--progress", type=bool, default=True, help="show a progress bar (on stderr)")
        p.add_argument("--json", type=bool, default=False, help="print the result as JSON instead of a table")

    @staticmethod
    def run(a):
        from vqgan.metrics.evaluate import METRIC_NAMES, evaluate_tokenizer
        from vqgan.models.io import load_model

        wanted = [m.strip().lower() for m in a.metrics.split(",") if m.strip()] if a.metrics else None
        if wanted is not None:
            unknown = sorted(set(wanted) - set(METRIC_NAMES) - {"rfid", "codebook"})
            if unknown:
                raise ValueError(f"--metrics: unknown {unknown}; choose from {', '.join(METRIC_NAMES)}")
            wanted = ["fid" if m == "rfid" else m for m in wanted]
        want_lpips = "lpips" in wanted if wanted is not None else a.lpips_weights is not None
        want_fid = "fid" in wanted if wanted is not None else a.fid_weights is not None
        device = resolve_device(a.device)
        # Weight files first: a missing file must cost a second, not an evaluation.
        lpips = fid = None
        if want_lpips:
            from vqgan.metrics.lpips import LPIPSMetric

            lpips = LPIPSMetric(a.lpips_net, a.lpips_weights)
        if want_fid:
            from vqgan.metrics.fid import ReconstructionFID

            fid = ReconstructionFID(a.fid_weights, a.fid_feature)
        model, _ = load_model(a.ckpt)
        loader, data = _eval_loader(model, a.data, a.batch_size, a.max_images, a.whole_split)
        result = evaluate_tokenizer(model, loader, data, device, lpips=lpips, fid=fid, progress=a.progress,
                                    checkpoint=str(a.ckpt))
        if a.output:
            out = Path(a.output)
            out.mkdir(parents=True, exist_ok=True)
            (out / "evaluation.json").write_text(json.dumps(result.to_dict(), indent=2))
        if a.json:
            json.dump(result.to_dict(), sys.stdout, indent=2)
            print()
        else:
            _print_table(result)
            if a.output:
                print(f"written {Path(a.output) / 'evaluation.json'}")
        return 0


def _infer_run_dir(ckpt: str) -> Path | None:
    """RUN_DIR for RUN_DIR/checkpoints/NAME.ckpt when RUN_DIR has a config.yaml."""
    p = Path(ckpt).resolve()
    if p.parent.name == "checkpoints" and (p.parent.parent / "config.yaml").is_file():
        return p.parent.parent
    return None


def run_visualize(ckpt: str, output: str | Path, run_dir: str | Path | None, data_ns, num_images: int = 64,
                  device: str = "cpu", tsne_points: int = 600, report: bool = True, batch_idx: int = 0) -> Path | None:
    """Load ``ckpt``, take ``num_images`` evaluation images (the ``batch_idx``-th group of them, see
    :func:`_eval_loader`), write every picture into ``output`` and (with ``report``) ``output/report.html``;
    returns the report's path."""
    import torch

    from vqgan.config import dump_config
    from vqgan.models.io import load_model
    from vqgan.viz.report import report_for_run
    from vqgan.viz.visualize import visualize_model

    model, exp = load_model(ckpt)
    model = model.to(device)
    loader, _ = _eval_loader(model, data_ns, None, num_images, batch_idx=batch_idx)
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


@command("visualize", "Every picture of a tokenizer: reconstructions, latent projections, codebook atlas and usage, token maps, interpolation, video, training diagnostics; and the HTML report.")
class Visualize:
    @staticmethod
    def build(p, argv):
        p.add_argument("--ckpt", type=str, required=True, help="training checkpoint (.ckpt) or pretrained folder")
        p.add_argument("--run-dir", type=str, default=None,
                       help="training run folder, for its diagnostics, config and metrics (default: inferred from "
                            "RUN_DIR/checkpoints/*.ckpt)")
        p.add_argument("--output", type=str, required=True, help="output folder for the pictures and report.html")
        _data_arguments(p, argv)
        p.add_argument("--num-images", type=int, default=64, help="evaluation images used for the pictures")
        p.add_argument("--batch-idx", type=int, default=0,
                       help="which batch of --num-images evaluation images to draw (seed 000's --batch_idx); with "
                            "chunked video data (data.videos_per_chunk), which chunk of videos")
        p.add_argument("--tsne-points", type=int, default=600, help="encoder outputs shown by t-SNE (seeded subsample)")
        p.add_argument("--report", type=bool, default=True, help="also write OUTPUT/report.html")
        p.add_argument("--device", type=str, default="auto", help="cpu, cuda, or auto")

    @staticmethod
    def run(a):
        run_dir = a.run_dir or _infer_run_dir(a.ckpt)
        if a.run_dir is None and run_dir is not None:
            print(f"run folder: {run_dir}")
        report = run_visualize(a.ckpt, a.output, run_dir, a.data, a.num_images, resolve_device(a.device), a.tsne_points,
                               a.report, batch_idx=a.batch_idx)
        print(f"pictures in {a.output}" + (f"; report {report}" if report else ""))
        return 0


@command("report", "Write one self-contained HTML page of a run: config, metrics and every picture (images embedded).")
class Report:
    @staticmethod
    def build(p, argv):
        p.add_argument("--run-dir", type=str, required=True, help="training run folder")
        p.add_argument("--figures", type=str, default=None,
                       help="folder written by `vqgan visualize` (default: RUN_DIR/visualizations; made from "
                            "RUN_DIR/checkpoints/last.ckpt when missing)")
        p.add_argument("--output", type=str, default=None, help="HTML file (default: RUN_DIR/report.html)")
        p.add_argument("--visualize", type=bool, default=True,
                       help="run visualize first when the figures folder has no figures.json and the run has a checkpoint")
        p.add_argument("--screenshot", type=str, default=None, help="also save a PNG screenshot of the page (needs chromium)")
        p.add_argument("--device", type=str, default="auto", help="cpu, cuda, or auto")

    @staticmethod
    def run(a):
        from vqgan.viz.report import report_for_run, screenshot

        run_dir = Path(a.run_dir)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"--run-dir {run_dir}: no such folder")
        figures = Path(a.figures) if a.figures else run_dir / "visualizations"
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        if a.visualize and not (figures / "figures.json").is_file() and ckpt.is_file():
            from jsonargparse import Namespace

            from vqgan.config import to_dict
            from vqgan.models.io import experiment_from_checkpoint, load_checkpoint_file

            data = to_dict(experiment_from_checkpoint(load_checkpoint_file(ckpt)).data)
            print(f"no pictures in {figures}: drawing them from {ckpt}")
            run_visualize(str(ckpt), figures, run_dir, Namespace(**data), device=resolve_device(a.device), report=False)
        path = report_for_run(run_dir, figures, a.output)
        print(f"report {path}")
        if a.screenshot:
            print(f"screenshot {screenshot(path, a.screenshot)}")
        return 0
