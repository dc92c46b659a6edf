"""The whole two-stage pipeline in one call, as seed 002's ``make ffhq`` ran it, each stage by its command's
library function (README lists the folders). A stage whose output is complete is skipped, so the same command
continues an interrupted pipeline; debug mode runs a handful of batches per stage and logs nothing online."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Subset

from vqgan.config import ExperimentConfig, to_dict
from vqgan.data import build_datasets
from vqgan.data.tokens import MANIFEST, encode_dataset, read_manifest
from vqgan.inference import generate_images
from vqgan.models.io import load_model
from vqgan.models.prior.config import PriorExperimentConfig
from vqgan.train.fit import fit
from vqgan.train.prior import fit_prior

log = logging.getLogger(__name__)

# Seed 002's DEBUG mode "only runs 10 training batches".
DEBUG_BATCHES = 10


@dataclass
class PipelineResult:
    """Where each stage wrote its output, the two trainings' ``metrics.json`` and what sampling reported."""

    tokenizer: str
    tokens: str
    prior: str
    grid: str
    tokenizer_metrics: dict[str, Any]
    prior_metrics: dict[str, Any]
    samples: dict[str, Any]


def _train_once(name: str, run_dir: Path, train: Callable[..., dict]) -> tuple[dict[str, Any], Path]:
    """A stage's metrics and last checkpoint: read back if it finished, else ``train(resume)``."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if (run_dir / "metrics.json").is_file():
        log.info("%s: done already, %s", name, run_dir / "metrics.json")
        return json.loads((run_dir / "metrics.json").read_text()), last
    log.info("%s: training into %s", name, run_dir)
    return train("last" if last.is_file() else None), last


def run_pipeline(
    cfg: ExperimentConfig, prior: PriorExperimentConfig, run_dir: str | Path, num_samples: int = 16,
    ncol: int = 8, device: str = "cpu", progress: bool = False,
) -> PipelineResult:
    """Train the tokenizer ``cfg``, encode its training set, train ``prior`` on it, sample; in ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    debug = cfg.train.debug
    prior = copy.deepcopy(prior)
    if debug:  # a handful of batches in every stage, no online logging (the stage-1 fit does its own)
        prior.train.max_steps = min(prior.train.max_steps, DEBUG_BATCHES)
        prior.train.val_every_n_steps = min(prior.train.val_every_n_steps, prior.train.max_steps)
        prior.train.warmup_steps = min(prior.train.warmup_steps, prior.train.max_steps // 2)

    tok_dir = run_dir / "tokenizer"
    tok_metrics, tok_ckpt = _train_once("stage 1 (tokenizer)", tok_dir, lambda r: fit(cfg, tok_dir, resume=r))

    tokens_dir = run_dir / "tokens"  # the tokenizer's training set as token shards
    if (tokens_dir / MANIFEST).is_file() and read_manifest(tokens_dir).complete:
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

    prior_dir = run_dir / "prior"
    prior_metrics, prior_ckpt = _train_once("stage 2 (prior)", prior_dir, lambda r: fit_prior(
        prior, tokens_dir, prior_dir, resume=r, tokenizer=tok_ckpt))

    samples_dir = run_dir / "samples"
    log.info("sampling %d images into %s", num_samples, samples_dir)
    samples = generate_images(prior_ckpt, samples_dir, tokenizer=tok_ckpt, num=num_samples, ncol=ncol,
                              seed=prior.train.seed, device=device)
    result = PipelineResult(
        tokenizer=str(tok_ckpt), tokens=str(tokens_dir), prior=str(prior_ckpt), grid=str(samples_dir / "grid.png"),
        tokenizer_metrics=tok_metrics, prior_metrics=prior_metrics, samples=samples,
    )
    (run_dir / "pipeline.json").write_text(json.dumps(asdict(result), indent=1, default=str))
    return result
