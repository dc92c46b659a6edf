"""Stage-2 commands: ``encode`` (dataset -> token shards), ``fit-prior`` (train a GPT or MaskGIT prior on them)
and ``sample`` (generate token maps and decode them into images)."""

from __future__ import annotations

import json
from pathlib import Path

from vqgan.cli import command, preset_from_argv, report_skipped, resolve_device


@command("encode", "Encode a dataset with a trained tokenizer into token shards (code indices + labels), resumably.")
class Encode:
    @staticmethod
    def build(p, argv):
        from vqgan.cli.stage1 import _set_data_defaults_from_ckpt
        from vqgan.config import DataConfig

        p.add_argument("--ckpt", type=str, required=True, help="stage-1 training checkpoint (.ckpt) or pretrained folder")
        p.add_class_arguments(DataConfig, "data", help="data options (default: the checkpoint's data)")
        p.add_argument("--output", type=str, required=True, help="token folder to write (resumed if it exists)")
        p.add_argument("--what", type=str, default="indices", choices=["indices", "quantized", "continuous"],
                       help="code indices (for priors), quantized latents, or continuous latents before quantization")
        p.add_argument("--split", type=str, default="train", choices=["train", "val"], help="which split to encode")
        p.add_argument("--shard-size", type=int, default=1024, help="items per shard (the unit of resumption)")
        p.add_argument("--batch-size", type=int, default=64, help="encoding batch size")
        p.add_argument("--format", type=str, default="safetensors", choices=["safetensors", "npy"], help="shard files")
        p.add_argument("--seed", type=int, default=0, help="seed of the dataset's random crops")
        p.add_argument("--device", type=str, default="auto", help="cpu, cuda, or auto")
        p.add_argument("--progress", type=bool, default=True, help="show a progress bar")
        ckpt = next((argv[i + 1] for i, x in enumerate(argv[:-1]) if x == "--ckpt"), None)
        if ckpt and argv[:1] == ["encode"]:
            _set_data_defaults_from_ckpt(p, ckpt)

    @staticmethod
    def run(a):
        from vqgan.config import DataConfig, from_dict, to_dict
        from vqgan.data import build_datasets
        from vqgan.data.tokens import encode_dataset
        from vqgan.models.io import load_model

        model, _ = load_model(a.ckpt)
        data = from_dict(DataConfig, a.data.as_dict())
        if data.resolution != model.config.resolution and not Path(a.ckpt).is_dir():
            raise ValueError(f"--data.resolution={data.resolution} differs from the tokenizer's {model.config.resolution}")
        train, val = build_datasets(data, a.seed)
        ds = train if a.split == "train" else val
        source = {"tokenizer": str(Path(a.ckpt).resolve()), "data": to_dict(data), "split": a.split, "seed": a.seed}
        m = encode_dataset(model, ds, a.output, what=a.what, shard_size=a.shard_size, batch_size=a.batch_size,
                           file_format=a.format, device=resolve_device(a.device), source=source, progress=a.progress)
        print(json.dumps({"output": a.output, "items": m.num_written, "skipped": m.skipped, "shards": len(m.shards),
                          "complete": m.complete, "token_shape": m.token_shape, "codebook_size": m.codebook_size,
                          "num_classes": m.num_classes}))
        return report_skipped("encode", m.skipped, m.num_written + m.skipped)


@command("fit-prior", "Train a stage-2 prior (GPT or MaskGIT) on a token folder, from a YAML config with dotted overrides.")
class FitPrior:
    @staticmethod
    def build(p, argv):
        from vqgan.models.prior.config import add_prior_arguments, get_prior_preset, list_prior_presets

        # Other sub-commands have their own --preset: read ours only when it is ours.
        preset = preset_from_argv(argv) if argv[:1] == ["fit-prior"] else None
        p.add_argument("--preset", type=str, default=None, help=f"start from a prior preset: {', '.join(list_prior_presets())}")
        add_prior_arguments(p, get_prior_preset(preset) if preset else None)
        p.add_argument("--tokens", type=str, default=None, help="token folder written by `vqgan encode`")
        p.add_argument("--run-dir", type=str, default=None, help="folder for config, checkpoints, samples, logs, metrics")
        p.add_argument("--run-name", type=str, default=None, help="name of the run (W&B); without --run-dir it trains in runs/NAME")
        p.add_argument("--max-steps", type=int, default=None, help="train this many steps (sets train.max_steps and clears train.max_epochs)")
        p.add_argument("--resume", type=str, default=None, help="'last' (the newest good checkpoint of the run) or a checkpoint path")
        p.add_argument("--tokenizer", type=str, default=None, help="stage-1 checkpoint to decode validation samples "
                       "(default: the one recorded in the token folder)")

    @staticmethod
    def run(a):
        from vqgan.models.prior.config import prior_from_namespace
        from vqgan.train.harness import is_rank_zero
        from vqgan.train.prior import fit_prior

        cfg = prior_from_namespace(a)
        if a.max_steps is not None:  # "train N steps", also for a config that counts epochs
            cfg.train.max_steps, cfg.train.max_epochs = a.max_steps, None
        metrics = fit_prior(cfg, a.tokens, a.run_dir, resume=a.resume, tokenizer=a.tokenizer, run_name=a.run_name)
        if is_rank_zero():  # under DDP every rank returns here; one summary
            keys = ("loss", "perplexity", "accuracy", "sample_code_usage", "sample_code_tv_distance", "steps", "train_seconds")
            print(json.dumps({k: metrics[k] for k in keys if k in metrics}))
        return 0


@command("sample", "Sample images from a trained prior and tokenizer: an image grid and the individual images.")
class Sample:
    @staticmethod
    def build(p, argv):
        p.add_argument("--prior", type=str, required=True, help="prior checkpoint written by `vqgan fit-prior`")
        p.add_argument("--tokenizer", type=str, default=None,
                       help="stage-1 checkpoint or pretrained folder (default: the one the tokens were encoded with)")
        p.add_argument("--num", type=int, default=16, help="number of samples")
        p.add_argument("--class", type=str, default=None,
                       help="class index or name to condition on; 'all' cycles through the classes; default: unconditional")
        p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1: none)")
        p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature")
        p.add_argument("--top-k", type=int, default=None, help="keep the k most likely codes")
        p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep codes up to this probability mass")
        p.add_argument("--steps", type=int, default=8, help="MaskGIT decoding steps")
        p.add_argument("--no-cache", type=bool, default=False, help="GPT: recompute the whole prefix at every step")
        p.add_argument("--seed", type=int, default=0, help="random seed")
        p.add_argument("--ncol", type=int, default=8, help="images per row of the grid")
        p.add_argument("--output", type=str, required=True, help="output folder")
        p.add_argument("--device", type=str, default="auto", help="cpu, cuda, or auto")

    @staticmethod
    def run(a):
        from vqgan.inference import generate_images

        result = generate_images(
            a.prior, a.output, tokenizer=a.tokenizer, num=a.num, class_=getattr(a, "class"), cfg_scale=a.cfg_scale,
            temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, steps=a.steps, use_cache=not a.no_cache,
            seed=a.seed, ncol=a.ncol, device=resolve_device(a.device),
        )
        print(json.dumps(result))
        return 0
