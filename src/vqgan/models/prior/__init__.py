"""Stage-2 priors: an autoregressive GPT and MaskGIT over a tokenizer's code indices, a flow-matching DiT over
its continuous latents; all class-conditional with classifier-free guidance, made by :func:`build_prior`."""

from __future__ import annotations

from vqgan.models.prior.config import (
    PriorDataConfig,
    PriorExperimentConfig,
    PriorModelConfig,
    PriorTrainConfig,
    get_prior_preset,
    list_prior_presets,
    load_prior_config,
    register_prior_preset,
)
from vqgan.models.prior.flow import FlowOutput, FlowPrior, flow_matching_loss, flow_matching_target, solve_ode
from vqgan.models.prior.gpt import GPTPrior
from vqgan.models.prior.maskgit import MaskGITPrior, cosine_schedule, masked_counts
from vqgan.models.prior.sampling import PriorOutput, classifier_free_guidance, filter_logits, sample_logits

Prior = GPTPrior | MaskGITPrior | FlowPrior
PRIORS: dict[str, type[Prior]] = {"gpt": GPTPrior, "maskgit": MaskGITPrior, "flow": FlowPrior}


def build_prior(config: PriorModelConfig) -> Prior:
    """The prior of kind ``config.kind``."""
    if config.kind not in PRIORS:
        raise ValueError(f"model.kind={config.kind!r}; choose one of {sorted(PRIORS)}")
    return PRIORS[config.kind](config)


__all__ = [
    "FlowOutput", "FlowPrior", "GPTPrior", "MaskGITPrior", "PRIORS", "PriorDataConfig",
    "PriorExperimentConfig", "PriorModelConfig", "PriorOutput", "PriorTrainConfig", "build_prior",
    "classifier_free_guidance", "cosine_schedule", "filter_logits", "flow_matching_loss",
    "flow_matching_target", "get_prior_preset", "list_prior_presets", "load_prior_config", "masked_counts",
    "register_prior_preset", "sample_logits", "solve_ode"]
