"""Stage-2 commands: ``encode`` (dataset -> token or latent shards), ``fit-prior`` (a GPT or MaskGIT prior on
the tokens, or a flow prior on the latents), ``sample`` (decoded images) and ``pipeline`` (both stages)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from vqgan.cli import command, report_skipped, run_training
from vqgan.cli.stage1 import eval_data
from vqgan.config import DataConfig, ExperimentConfig
from vqgan.models.prior.config import PRIOR_PRESETS, PriorExperimentConfig
from vqgan.registry import PRESETS


@command("encode")
def encode(
    ckpt: str, output: str, data: DataConfig | str | None = None,
    what: Literal["indices", "quantized", "continuous"] = "indices", split: Literal["train", "val"] = "train",
    shard_size: int = 1024, batch_size: int = 64, format: Literal["safetensors", "npy"] = "safetensors",
    seed: int = 0, device: str = "auto", progress: bool = True,
) -> int:
    """Encode a dataset with a trained tokenizer into token shards (code indices + labels), resumably.

    Args:
        output: token folder to write (resumed if it exists).
        data: the images to encode: a folder of images, a YAML file of data options, or --data.KEY options over the
            checkpoint's data (default: the checkpoint's data).
        what: code indices (for priors), quantized latents, or continuous latents before quantization.
        split: which split to encode.
        shard_size: items per shard (the unit of resumption).
        batch_size: encoding batch size.
        format: shard file format.
        seed: seed of the dataset's random crops.
    """
    from vqgan.config import to_dict
    from vqgan.data import build_datasets
    from vqgan.data.tokens import encode_dataset
    from vqgan.models.io import load_model

    model, exp = load_model(ckpt)
    data_cfg = eval_data(data, exp.data if exp else None, model.config)
    if data_cfg.resolution != model.config.resolution and not Path(ckpt).is_dir():
        raise ValueError(f"--data.resolution={data_cfg.resolution} differs from the tokenizer's {model.config.resolution}")
    train, val = build_datasets(data_cfg, seed)
    source = {"tokenizer": str(Path(ckpt).resolve()), "data": to_dict(data_cfg), "split": split, "seed": seed}
    m = encode_dataset(model, train if split == "train" else val, output, what=what, shard_size=shard_size,
                       batch_size=batch_size, file_format=format, device=device, source=source, progress=progress)
    print(json.dumps({"output": output, "items": m.num_written, "skipped": m.skipped, "shards": len(m.shards),
                      "complete": m.complete, "token_shape": m.token_shape, "codebook_size": m.codebook_size,
                      "num_classes": m.num_classes}))
    return report_skipped("encode", m.skipped, m.num_written + m.skipped)


@command("fit-prior", presets=PRIOR_PRESETS)
def fit_prior(
    config: PriorExperimentConfig, run_dir: str | None = None, run_name: str | None = None,
    tokens: str | None = None, max_steps: int | None = None, resume: str | None = None,
    tokenizer: str | None = None,
) -> int:
    """Train a stage-2 prior (GPT or MaskGIT on a token folder, flow on a latent folder), from a preset or a YAML config.

    Args:
        run_dir: folder for the resolved config, checkpoints, samples, logs and metrics.
        run_name: name of the run (W&B); without --run-dir it trains in runs/NAME.
        tokens: token folder written by `vqgan encode` (overrides --data.tokens).
        max_steps: train this many steps (sets train.max_steps and clears train.max_epochs).
        resume: 'last' (the newest good checkpoint of the run) or a checkpoint path.
        tokenizer: stage-1 checkpoint to decode validation samples (default: the one recorded in the token folder).
    """
    from vqgan.train.prior import fit_prior as train_prior

    keys = ("loss", "perplexity", "accuracy", "sample_code_usage", "sample_code_tv_distance", "steps",
            "train_seconds")
    return run_training(lambda: train_prior(config, tokens, run_dir, resume=resume, tokenizer=tokenizer,
                                            run_name=run_name), config, max_steps, keys)


@command("sample")
def sample(
    prior: str, output: str, tokenizer: str | None = None, num: int = 16, class_: str | None = None,
    cfg_scale: float = 1.0, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
    steps: int | None = None, sampler: Literal["euler", "heun"] | None = None, snap: bool | None = None,
    no_cache: bool = False, seed: int = 0, ncol: int = 8, prefix_frames: int = 0, input: str | None = None,
    fps: float = 4.0, device: str = "auto",
) -> int:
    """Sample images (or clips, as MP4/GIF grids) from a trained prior and tokenizer; --prefix-frames predicts frames.

    Args:
        prior: prior checkpoint written by `vqgan fit-prior`.
        tokenizer: stage-1 checkpoint or pretrained folder (default: the one the tokens were encoded with).
        num: number of samples.
        class_: class index or name to condition on; 'all' cycles through the classes; default: unconditional.
        cfg_scale: classifier-free guidance scale (1: none).
        temperature: softmax temperature.
        top_k: keep the k most likely codes.
        top_p: nucleus sampling: keep codes up to this probability mass.
        steps: MaskGIT decoding steps (default 8) or a flow prior's ODE steps (default: its sample_steps).
        sampler: flow prior: ODE solver (default: the prior's).
        snap: flow prior: snap sampled latents to the nearest codes before decoding (default: the prior's).
        no_cache: GPT: recompute the whole prefix at every step.
        ncol: images (clips: at most 8) per row of the grid.
        prefix_frames: clip priors: frame prediction, keeping the codes of the first K frames of every --input clip.
        input: video file or folder: the clips for --prefix-frames.
        fps: frame rate of the written MP4/GIF clips.
    """
    from vqgan.inference import generate_images

    result = generate_images(
        prior, output, tokenizer=tokenizer, num=num, class_=class_, cfg_scale=cfg_scale, temperature=temperature,
        top_k=top_k, top_p=top_p, steps=steps, use_cache=not no_cache, seed=seed, ncol=ncol, device=device,
        sampler=sampler, snap=snap, prefix_frames=prefix_frames, inputs=input, fps=fps,
    )
    print(json.dumps(result))
    return 0


@command("pipeline", presets=PRESETS)
def pipeline(
    config: ExperimentConfig, run_dir: str, prior: PriorExperimentConfig | None = None,
    prior_config: str | None = None, prior_preset: str = "quickstart-gpt", num_samples: int = 16,
    ncol: int = 8, device: str = "auto",
) -> int:
    """Run both stages from one config: train the tokenizer, encode its training set, train a prior, write a sample grid (seed 002's `make ffhq`).

    Args:
        run_dir: run folder: RUN/tokenizer, RUN/tokens, RUN/prior, RUN/samples (a finished stage is skipped).
        prior: the prior's options, prefixed (--prior.train.max_steps 500); they override --prior-config.
        prior_config: YAML file of the prior (e.g. configs/prior_gpt.yaml), read over --prior-preset.
        prior_preset: the prior preset the prior starts from.
        num_samples: images in the sample grid.
        ncol: images per row of the grid.
        device: encoding and sampling device: cpu, cuda, cuda:N, or auto.
    """
    from vqgan.config import replace_keys
    from vqgan.models.prior.config import load_prior_config
    from vqgan.train.pipeline import run_pipeline

    # The prior: its preset, then its file, then the --prior.* options (refused before any training).
    prior_cfg = replace_keys(load_prior_config(prior_config, preset=prior_preset), prior or {})
    r = run_pipeline(config, prior_cfg, run_dir, num_samples=num_samples, ncol=ncol, device=device)
    print(json.dumps({"tokenizer": r.tokenizer, "tokens": r.tokens, "prior": r.prior, "grid": r.grid,
                      "psnr": r.tokenizer_metrics.get("psnr"), "prior_loss": r.prior_metrics.get("loss")}))
    return 0
