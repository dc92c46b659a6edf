"""The whole two-stage pipeline in one call, as seed 002's ``make ffhq`` ran it: train the tokenizer, encode its
training set into token shards, train a transformer prior on them, and write a grid of samples.

Every stage is the library function its own command calls (:func:`vqgan.train.fit`, :func:`encode_dataset`,
:func:`vqgan.train.prior.fit_prior`, :func:`vqgan.inference.generate_images`), so ``vqgan pipeline`` and the four
commands run in turn give the same run. The run folder holds one folder per stage::

    RUN/tokenizer/   stage-1 run (config.yaml, checkpoints/last.ckpt, metrics.json, logs)
    RUN/tokens/      token shards of the tokenizer's training set (manifest.json, shard_*.safetensors)
    RUN/prior/       prior run (config.yaml, checkpoints/last.ckpt, metrics.json, logs)
    RUN/samples/     grid.png, images/, tokens.safetensors
    RUN/pipeline.json  what each stage produced

A stage whose output is complete is not run again, so the same command continues an interrupted pipeline (an
interrupted training resumes from its last checkpoint, an interrupted encoding from its last shard).

Debug mode (seed 002's ``DEBUG=True``, ``train.debug`` of the stage-1 config): every stage runs a handful of
batches (stage 1: :attr:`~vqgan.config.TrainConfig.debug`; encoding: ``DEBUG_BATCHES`` prior batches' worth of
items; prior: ``DEBUG_BATCHES`` steps) and nothing is logged online.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqgan.config import ExperimentConfig, to_dict
from vqgan.models.prior.config import PriorExperimentConfig

log = logging.getLogger(__name__)

# Seed 002's DEBUG mode "only runs 10 training batches".
DEBUG_BATCHES = 10


@dataclass
class PipelineResult:
    """Where each stage wrote its output, and the final metrics of the two trainings.

    Attributes:
        tokenizer: the stage-1 checkpoint.
        tokens: the token folder.
        prior: the prior checkpoint.
        grid: the sample grid PNG.
        tokenizer_metrics, prior_metrics: the ``metrics.json`` of each training.
        samples: what sampling reported (number, sampling time, code statistics).
    """

    tokenizer: str
    tokens: str
    prior: str
    grid: str
    tokenizer_metrics: dict[str, Any]
    prior_metrics: dict[str, Any]
    samples: dict[str, Any]


def _last_ckpt(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


def _resume(run_dir: Path) -> str | None:
    """Continue an interrupted training of this stage, if there is one."""
    return "last" if _last_ckpt(run_dir).is_file() else None


def run_pipeline(
    cfg: ExperimentConfig,
    prior: PriorExperimentConfig,
    run_dir: str | Path,
    num_samples: int = 16,
    ncol: int = 8,
    device: str = "cpu",
    progress: bool = False,
) -> PipelineResult:
    """Train the tokenizer ``cfg``, encode its training set, train the prior ``prior`` on the codes and sample
    ``num_samples`` images (a grid of ``ncol`` columns) into ``run_dir``; see the module docstring for the layout.

    ``cfg.train.debug`` runs every stage in debug mode. The prior's vocabulary, token map size and classes are
    taken from the token folder, as ``vqgan fit-prior`` does.
    """
    from torch.utils.data import Subset

    from vqgan.data import build_datasets
    from vqgan.data.tokens import MANIFEST, encode_dataset, read_manifest
    from vqgan.inference import generate_images
    from vqgan.models.io import load_model
    from vqgan.train.fit import fit
    from vqgan.train.prior import fit_prior

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    debug = cfg.train.debug
    prior = copy.deepcopy(prior)
    if debug:  # a handful of batches in every stage, no online logging (the stage-1 fit does its own)
        prior.train.max_steps = min(prior.train.max_steps, DEBUG_BATCHES)
        prior.train.val_every_n_steps = min(prior.train.val_every_n_steps, prior.train.max_steps)
        prior.train.warmup_steps = min(prior.train.warmup_steps, prior.train.max_steps // 2)

    # Stage 1: the tokenizer.
    tok_dir = run_dir / "tokenizer"
    if (tok_dir / "metrics.json").is_file():
        log.info("stage 1 (tokenizer): done already, %s", tok_dir / "metrics.json")
        tok_metrics = json.loads((tok_dir / "metrics.json").read_text())
    else:
        log.info("stage 1 (tokenizer): training into %s", tok_dir)
        tok_metrics = fit(cfg, tok_dir, resume=_resume(tok_dir))
    tok_ckpt = _last_ckpt(tok_dir)

    # Stage 2a: the tokenizer's training set as token shards.
    tokens_dir = run_dir / "tokens"
    done = (tokens_dir / MANIFEST).is_file() and read_manifest(tokens_dir).complete
    if done:
        log.info("encoding: done already, %s", tokens_dir)
    else:
        log.info("encoding the training set into %s", tokens_dir)
        model, _ = load_model(tok_ckpt)
        train_set, _ = build_datasets(cfg.data, cfg.train.seed)
        if debug:
            train_set = Subset(train_set, range(min(len(train_set), DEBUG_BATCHES * prior.data.batch_size)))
            train_set.classes = getattr(train_set.dataset, "classes", [])  # type: ignore[attr-defined]
        source = {"tokenizer": str(tok_ckpt.resolve()), "data": to_dict(cfg.data), "split": "train",
                  "seed": cfg.train.seed}
        encode_dataset(model, train_set, tokens_dir, batch_size=max(cfg.data.batch_size, 64), device=device,
                       source=source, progress=progress)

    # Stage 2b: the prior.
    prior_dir = run_dir / "prior"
    if (prior_dir / "metrics.json").is_file():
        log.info("stage 2 (prior): done already, %s", prior_dir / "metrics.json")
        prior_metrics = json.loads((prior_dir / "metrics.json").read_text())
    else:
        log.info("stage 2 (prior): training into %s", prior_dir)
        prior_metrics = fit_prior(prior, tokens_dir, prior_dir, resume=_resume(prior_dir), tokenizer=tok_ckpt)
    prior_ckpt = _last_ckpt(prior_dir)

    # Samples.
    samples_dir = run_dir / "samples"
    log.info("sampling %d images into %s", num_samples, samples_dir)
    samples = generate_images(prior_ckpt, samples_dir, tokenizer=tok_ckpt, num=num_samples, ncol=ncol,
                              seed=prior.train.seed, device=device)
    result = PipelineResult(
        tokenizer=str(tok_ckpt), tokens=str(tokens_dir), prior=str(prior_ckpt), grid=str(samples_dir / "grid.png"),
        tokenizer_metrics=tok_metrics, prior_metrics=prior_metrics, samples=samples,
    )
    (run_dir / "pipeline.json").write_text(json.dumps(result.__dict__, indent=1, default=str))
    return result
