"""Stage-1 commands: ``fit``, ``validate``, ``reconstruct``, ``presets``."""

from __future__ import annotations

import json
import sys

from vqgan.cli import command, preset_from_argv, report_skipped, resolve_device


@command("fit", "Train a stage-1 tokenizer (VQ-VAE / VQGAN) from a YAML config with dotted overrides.")
class Fit:
    @staticmethod
    def build(p, argv):
        from vqgan.config import add_experiment_arguments
        from vqgan.registry import get_preset, list_presets

        # Only for `vqgan fit`: other sub-commands (fit-prior) have presets of their own.
        preset = preset_from_argv(argv) if argv[:1] == ["fit"] else None
        p.add_argument("--preset", type=str, default=None, help=f"start from a named preset: {', '.join(list_presets())}")
        add_experiment_arguments(p, get_preset(preset) if preset else None)
        p.add_argument("--run-dir", type=str, default=None, help="folder for config, checkpoints, samples, logs, metrics")
        p.add_argument("--run-name", type=str, default=None, help="name of the run (W&B); without --run-dir it trains in runs/NAME")
        p.add_argument("--max-steps", type=int, default=None, help="train this many steps (sets train.max_steps and clears train.max_epochs)")
        p.add_argument("--resume", type=str, default=None, help="'last' (the newest good checkpoint of the run) or a checkpoint path")
        p.add_argument("--debug", type=bool, default=False, help="a handful of steps, 2 validation batches, no online logging")

    @staticmethod
    def run(a):
        from vqgan.config import experiment_from_namespace
        from vqgan.train import fit
        from vqgan.train.harness import is_rank_zero

        cfg = experiment_from_namespace(a)
        if a.max_steps is not None:  # "train N steps", also for a config that counts epochs
            cfg.train.max_steps, cfg.train.max_epochs = a.max_steps, None
        if a.debug:
            cfg.train.debug = True
        metrics = fit(cfg, a.run_dir, resume=a.resume, run_name=a.run_name)
        if is_rank_zero():  # under DDP every rank returns here; one summary
            keys = ("psnr", "ssim", "codebook_usage", "perplexity", "steps", "train_seconds")
            print(json.dumps({k: metrics[k] for k in keys}))
        return 0


@command("validate", "Print PSNR, SSIM, codebook usage and perplexity of a checkpoint as one JSON object.")
class Validate:
    @staticmethod
    def build(p, argv):
        from vqgan.config import DataConfig

        p.add_argument("--ckpt", type=str, required=True, help="training checkpoint (.ckpt) or pretrained folder")
        p.add_class_arguments(DataConfig, "data", help="data options (default: the checkpoint's validation data)")
        p.add_argument("--device", type=str, default="auto", help="cpu, cuda, or auto")
        ckpt = next((argv[i + 1] for i, x in enumerate(argv[:-1]) if x == "--ckpt"), None)
        if ckpt:
            _set_data_defaults_from_ckpt(p, ckpt)

    @staticmethod
    def run(a):
        from vqgan.config import DataConfig, from_dict
        from vqgan.metrics.evaluate import reconstruction_metrics
        from vqgan.models.io import load_model
        from vqgan.train.fit import build_loaders

        model, exp = load_model(a.ckpt)
        data = from_dict(DataConfig, a.data.as_dict())
        from vqgan.config import ExperimentConfig

        cfg = ExperimentConfig(model=model.config, data=data)
        _, val_loader = build_loaders(cfg)
        metrics = reconstruction_metrics(model, val_loader, resolve_device(a.device))
        json.dump(metrics, sys.stdout)
        print()
        return 0


@command("reconstruct", "Reconstruct an image, a folder of images, or a video file (MP4/GIF side by side, per-frame PSNR).")
class Reconstruct:
    @staticmethod
    def build(p, argv):
        p.add_argument("--ckpt", type=str, required=True, help="training checkpoint (.ckpt) or pretrained folder")
        p.add_argument("--input", type=str, required=True, help="an image file or a folder of images")
        p.add_argument("--output", type=str, required=True, help="output folder")
        p.add_argument("--resolution", type=int, default=None, help="resize+centre-crop side (default: the model's)")
        p.add_argument("--full-size", type=bool, default=False, help="keep whole images (cropped to a multiple of the downsampling)")
        p.add_argument("--device", type=str, default="auto", help="cpu, cuda, or auto")

    @staticmethod
    def run(a):
        from vqgan.inference import reconstruct_files
        from vqgan.models.io import load_model

        model, _ = load_model(a.ckpt)
        from pathlib import Path

        from vqgan.data.video import VIDEO_EXTENSIONS

        if Path(a.input).is_file() and Path(a.input).suffix.lower() in VIDEO_EXTENSIONS:  # a video: MP4/GIF out
            from vqgan.data.video import VideoDecodeError
            from vqgan.viz.video import reconstruct_video_file

            try:
                r = reconstruct_video_file(model, a.input, a.output, a.resolution, device=resolve_device(a.device))
            except VideoDecodeError as e:
                raise ValueError(f"cannot read video {e}") from None
            print(f"{r['file']}: {r['frames']} frames, PSNR {r['psnr']:.2f} dB -> {r['files']['mp4']}")
            return 0
        out = reconstruct_files(model, a.input, a.output, a.resolution, a.full_size, resolve_device(a.device))
        for r in out.records:
            print(f"{r['file']}: PSNR {r['psnr']:.2f} dB")
        return report_skipped("reconstruct", len(out.skipped), len(out.records) + len(out.skipped))


@command("presets", "List the named presets (architectures and experiments).")
class Presets:
    @staticmethod
    def build(p, argv):
        p.add_argument("--show", type=str, default=None, help="print the full YAML of one preset")

    @staticmethod
    def run(a):
        from vqgan.models.prior.config import describe_prior_presets, get_prior_preset
        from vqgan.registry import describe_presets, get_preset

        priors = describe_prior_presets()
        if a.show:
            import yaml

            from vqgan.config import to_dict

            cfg = get_prior_preset(a.show) if a.show in priors else get_preset(a.show)
            print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
            return 0
        print("tokenizers (vqgan fit --preset NAME):")
        for name, desc in describe_presets().items():
            print(f"  {name:28s} {desc}")
        print("priors (vqgan fit-prior --preset NAME):")
        for name, desc in priors.items():
            print(f"  {name:28s} {desc}")
        return 0


def _set_data_defaults_from_ckpt(p, ckpt: str) -> None:
    """Default the ``--data.*`` options to the checkpoint's data config (if it is a training checkpoint)."""
    from pathlib import Path

    from vqgan.config import to_dict
    from vqgan.models.io import experiment_from_checkpoint, load_checkpoint_file

    if not Path(ckpt).is_file():
        return
    try:
        cfg = experiment_from_checkpoint(load_checkpoint_file(ckpt))
    except Exception:
        return  # reported properly by run()
    p.set_defaults({f"data.{k}": v for k, v in to_dict(cfg.data).items()})
