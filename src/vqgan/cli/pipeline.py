"""``vqgan pipeline``: the whole two-stage pipeline from one command (seed 002's ``make ffhq``)."""

from __future__ import annotations

import json

from vqgan.cli import command, preset_from_argv, resolve_device


def _option(argv: list[str], name: str) -> str | None:
    """The value of option ``name`` in ``argv``, read before parsing (it sets the defaults of other options)."""
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


@command("pipeline", "Run both stages from one config: train the tokenizer, encode its training set, train a prior, "
         "write a sample grid (seed 002's `make ffhq`).")
class Pipeline:
    @staticmethod
    def build(p, argv):
        from vqgan.config import _flatten as flatten
        from vqgan.config import add_experiment_arguments, to_dict
        from vqgan.models.prior.config import PRIOR_SECTIONS, list_prior_presets, load_prior_config
        from vqgan.registry import get_preset, list_presets

        preset = preset_from_argv(argv) if argv[:1] == ["pipeline"] else None
        p.add_argument("--preset", type=str, default=None, help=f"stage-1 preset: {', '.join(list_presets())}")
        add_experiment_arguments(p, get_preset(preset) if preset else None)
        p.add_argument("--run-dir", type=str, required=True,
                       help="run folder: RUN/tokenizer, RUN/tokens, RUN/prior, RUN/samples (a finished stage is skipped)")
        p.add_argument("--prior-config", type=str, default=None, help="YAML file of the prior (e.g. configs/prior_gpt.yaml)")
        p.add_argument("--prior-preset", type=str, default="quickstart-gpt",
                       help=f"prior preset under --prior-config: {', '.join(list_prior_presets())}")
        # The prior's options, prefixed (--prior.train.max_steps 500); their defaults come from --prior-preset,
        # then --prior-config, as a stage-1 --preset and --config set the defaults of `vqgan fit`.
        for key, cls in PRIOR_SECTIONS.items():
            p.add_class_arguments(cls, f"prior.{key}", help=f"prior {key} options (override --prior-config)")
        if argv[:1] == ["pipeline"]:
            try:
                prior = load_prior_config(_option(argv, "--prior-config"), preset=_option(argv, "--prior-preset") or "quickstart-gpt")
            except Exception:  # noqa: BLE001 - a bad file or preset is reported by run() with a clear message
                prior = None
            if prior is not None:
                p.set_defaults({f"prior.{k}": v for k, v in flatten(to_dict(prior)).items() if k != "name"})
        p.add_argument("--num-samples", type=int, default=16, help="images in the sample grid")
        p.add_argument("--ncol", type=int, default=8, help="images per row of the grid")
        p.add_argument("--device", type=str, default="auto", help="encoding and sampling device: cpu, cuda, or auto")

    @staticmethod
    def run(a):
        from vqgan.config import experiment_from_namespace, from_dict
        from vqgan.models.prior.config import PriorExperimentConfig, load_prior_config
        from vqgan.train.pipeline import run_pipeline

        cfg = experiment_from_namespace(a)
        # Loaded again for its errors (missing file, unknown key, unknown preset) and its name; the values are the
        # parsed ones (the file's, then the --prior.* overrides).
        base = load_prior_config(a.prior_config, preset=a.prior_preset)
        prior = from_dict(PriorExperimentConfig, {"name": base.name, **a.prior.as_dict()})
        r = run_pipeline(cfg, prior, a.run_dir, num_samples=a.num_samples, ncol=a.ncol, device=resolve_device(a.device))
        print(json.dumps({"tokenizer": r.tokenizer, "tokens": r.tokens, "prior": r.prior, "grid": r.grid,
                          "psnr": r.tokenizer_metrics.get("psnr"), "prior_loss": r.prior_metrics.get("loss")}))
        return 0
