"""``vqgan pipeline``: the whole two-stage pipeline from one command (seed 002's ``make ffhq``)."""

from __future__ import annotations

import json

from vqgan.cli import command
from vqgan.config import ExperimentConfig
from vqgan.models.prior.config import PriorExperimentConfig
from vqgan.registry import PRESETS


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
