"""Typed configuration of stage 2: a transformer prior over a tokenizer's code indices.

A run is one :class:`PriorExperimentConfig` (model, data, training). As for stage 1, YAML files set values, dotted
command-line options override them (``--model.n_layer 4``), and the resolved config is written next to every run.
Named presets live in a small registry of their own (:func:`register_prior_preset`, :func:`get_prior_preset`,
:func:`list_prior_presets`) because their type differs from stage 1's :class:`~vqgan.config.ExperimentConfig`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vqgan.config import (
    ConfigError,
    TrainerSettings,
    _flatten,
    parse_config_args,
    sections_from_namespace,
    to_dict,
)


@dataclass
class PriorModelConfig:
    """Transformer prior architecture (nanoGPT's ``GPTConfig`` plus what MaskGIT and conditioning need).

    Attributes:
        kind: ``gpt`` (autoregressive, raster order, Esser et al. 2021) or ``maskgit`` (bidirectional, masked
            token modelling, Chang et al. 2022).
        vocab_size: number of codes of the tokenizer (its codebook size).
        token_height, token_width: the token map of one image; the sequence length is their product.
        n_layer, n_head, n_embd: transformer depth, heads and width.
        dropout: dropout on embeddings, attention and MLP outputs.
        bias: biases in linear layers and LayerNorms.
        rope: rotary position embeddings (Su et al. 2021) instead of learned absolute ones.
        rope_base: RoPE's frequency base.
        num_classes: number of classes for class conditioning; 0 trains an unconditional prior. One more "null"
            class is always added, used for unlabelled data and classifier-free guidance (Ho & Salimans 2022).
        cond_dropout: probability of replacing a label by the null class during training (needed for guidance).
        mlp_ratio: hidden width of the MLP in units of ``n_embd``.
    """

    kind: Literal["gpt", "maskgit"] = "gpt"
    vocab_size: int = 1024
    token_height: int = 8
    token_width: int = 8
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    bias: bool = True
    rope: bool = False
    rope_base: float = 10000.0
    num_classes: int = 0
    cond_dropout: float = 0.1
    mlp_ratio: int = 4

    @property
    def num_tokens(self) -> int:
        """Tokens per image (the length of the sequence the prior models)."""
        return self.token_height * self.token_width

    @property
    def null_class(self) -> int:
        """Index of the null (unconditional) class embedding."""
        return self.num_classes

    def validate(self) -> PriorModelConfig:
        if self.n_embd % self.n_head:
            raise ConfigError(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}")
        if self.rope and (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"model.rope needs an even head dimension, got {self.n_embd // self.n_head}")
        if self.vocab_size < 2:
            raise ConfigError(f"model.vocab_size={self.vocab_size} must be at least 2")
        if self.num_classes < 0:
            raise ConfigError(f"model.num_classes={self.num_classes} must be >= 0")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ConfigError(f"model.cond_dropout={self.cond_dropout} must be in [0, 1)")
        if min(self.token_height, self.token_width) < 1:
            raise ConfigError("model.token_height and model.token_width must be positive")
        return self


@dataclass
class PriorDataConfig:
    """Where the token shards come from (written by ``vqgan encode``) and how batches are made.

    Attributes:
        tokens: folder of token shards (``--tokens`` on the command line overrides it).
        val_tokens: folder of validation shards; ``None`` uses ``TOKENS/val`` if it exists, else holds out
            ``val_fraction`` of the training maps.
        val_fraction: share of the maps held out for validation when there is no validation folder.
        batch_size, val_batch_size, num_workers: loader options.
    """

    tokens: str | None = None
    val_tokens: str | None = None
    val_fraction: float = 0.05
    batch_size: int = 32
    val_batch_size: int | None = None
    num_workers: int = 0


@dataclass
class PriorTrainConfig(TrainerSettings):
    """Stage-2 training: the shared :class:`~vqgan.config.TrainerSettings` (here with AdamW, linear warm-up then
    cosine decay, and ``best.ckpt`` by the lowest validation loss) and the validation samples.

    Attributes:
        num_samples: token maps sampled after every validation for the code-usage histogram (and an image grid
            with a tokenizer).
        sample_temperature, sample_top_k, sample_top_p: sampling options of those maps.
        maskgit_steps: MaskGIT decoding steps for those maps.
    """

    max_steps: int = 2000
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.01
    warmup_steps: int = 100
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    monitor: str = "val/loss"
    monitor_mode: Literal["max", "min"] = "min"
    num_samples: int = 16
    sample_temperature: float = 1.0
    sample_top_k: int | None = None
    sample_top_p: float | None = None
    maskgit_steps: int = 8


@dataclass
class PriorExperimentConfig:
    """A whole stage-2 run."""

    name: str = "prior"
    model: PriorModelConfig = field(default_factory=PriorModelConfig)
    data: PriorDataConfig = field(default_factory=PriorDataConfig)
    train: PriorTrainConfig = field(default_factory=PriorTrainConfig)

    def validate(self) -> PriorExperimentConfig:
        self.model.validate()
        self.train.validate()
        if self.data.batch_size < 1:
            raise ConfigError(f"data.batch_size={self.data.batch_size} must be positive")
        return self


PRIOR_SECTIONS: dict[str, type] = {"model": PriorModelConfig, "data": PriorDataConfig, "train": PriorTrainConfig}


def add_prior_arguments(parser: Any, defaults: PriorExperimentConfig | None = None) -> None:
    """Add ``--config`` (YAML) and every field of :class:`PriorExperimentConfig` as a dotted option to a
    jsonargparse parser; ``defaults`` (e.g. a preset) seed the values."""
    from jsonargparse import ActionConfigFile

    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with a prior configuration")
    parser.add_argument("--name", type=str, default="prior", help="name of the run")
    for key, cls in PRIOR_SECTIONS.items():
        parser.add_class_arguments(cls, key, help=(cls.__doc__ or "").strip().split("\n")[0])
    if defaults is not None:
        parser.set_defaults(_flatten(to_dict(defaults)))


def prior_from_namespace(ns: Any) -> PriorExperimentConfig:
    """A parsed jsonargparse namespace (holding the prior keys) as a :class:`PriorExperimentConfig`."""
    return sections_from_namespace(PriorExperimentConfig, PRIOR_SECTIONS, ns)


def load_prior_config(
    path: str | Path | None = None, overrides: list[str] | None = None, preset: str | None = None
) -> PriorExperimentConfig:
    """Preset, then YAML file, then dotted overrides (``["--model.n_layer", "2"]``), as ``vqgan fit-prior``."""
    defaults = get_prior_preset(preset) if preset else None
    ns = parse_config_args(lambda parser: add_prior_arguments(parser, defaults), path, overrides, explain=False)
    return prior_from_namespace(ns)


# -- presets ------------------------------------------------------------------------------------------------
_PRIOR_PRESETS: dict[str, Callable[[], PriorExperimentConfig]] = {}
_PRIOR_DESCRIPTIONS: dict[str, str] = {}


def register_prior_preset(name: str, description: str = "") -> Callable:
    """Decorator registering ``fn() -> PriorExperimentConfig`` under ``name``."""

    def wrap(fn: Callable[[], PriorExperimentConfig]) -> Callable[[], PriorExperimentConfig]:
        if name in _PRIOR_PRESETS:
            raise ValueError(f"prior preset {name!r} is already registered")
        _PRIOR_PRESETS[name] = fn
        _PRIOR_DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().split("\n")[0]
        return fn

    return wrap


def get_prior_preset(name: str) -> PriorExperimentConfig:
    """A fresh copy of a prior preset."""
    if name not in _PRIOR_PRESETS:
        raise KeyError(f"unknown prior preset {name!r}; available: {', '.join(list_prior_presets())}")
    cfg = copy.deepcopy(_PRIOR_PRESETS[name]())
    cfg.name = name
    return cfg


def list_prior_presets(prefix: str = "") -> list[str]:
    return sorted(n for n in _PRIOR_PRESETS if n.startswith(prefix))


def describe_prior_presets() -> dict[str, str]:
    return {n: _PRIOR_DESCRIPTIONS[n] for n in list_prior_presets()}


def _tiny_train() -> PriorTrainConfig:
    return PriorTrainConfig(
        max_steps=4, lr=3e-3, warmup_steps=0, val_every_n_steps=2, log_every_n_steps=1, num_samples=4, maskgit_steps=4
    )


@register_prior_preset("test-gpt", "tiny class-conditional GPT prior for tests (2 layers, 32 wide, RoPE)")
def _test_gpt() -> PriorExperimentConfig:
    return PriorExperimentConfig(
        model=PriorModelConfig(kind="gpt", vocab_size=32, token_height=8, token_width=8, n_layer=2, n_head=2,
                               n_embd=32, rope=True, num_classes=9),
        data=PriorDataConfig(batch_size=8, val_fraction=0.25),
        train=_tiny_train(),
    )


@register_prior_preset("test-maskgit", "tiny class-conditional MaskGIT prior for tests (2 layers, 32 wide)")
def _test_maskgit() -> PriorExperimentConfig:
    return PriorExperimentConfig(
        model=PriorModelConfig(kind="maskgit", vocab_size=32, token_height=8, token_width=8, n_layer=2, n_head=2,
                               n_embd=32, num_classes=9),
        data=PriorDataConfig(batch_size=8, val_fraction=0.25),
        train=_tiny_train(),
    )


@register_prior_preset("quickstart-gpt", "GPT prior over the quickstart tokenizer's 8x8 codes (CPU-sized)")
def _quickstart_gpt() -> PriorExperimentConfig:
    return PriorExperimentConfig(
        model=PriorModelConfig(kind="gpt", vocab_size=1024, token_height=8, token_width=8, n_layer=4, n_head=4,
                               n_embd=128, dropout=0.1, rope=True, num_classes=9),
        data=PriorDataConfig(batch_size=64),
        train=PriorTrainConfig(max_steps=1500, lr=1e-3, warmup_steps=100, val_every_n_steps=500),
    )


@register_prior_preset("quickstart-maskgit", "MaskGIT prior over the quickstart tokenizer's 8x8 codes (CPU-sized)")
def _quickstart_maskgit() -> PriorExperimentConfig:
    return PriorExperimentConfig(
        model=PriorModelConfig(kind="maskgit", vocab_size=1024, token_height=8, token_width=8, n_layer=4, n_head=4,
                               n_embd=128, dropout=0.1, num_classes=9),
        data=PriorDataConfig(batch_size=64),
        train=PriorTrainConfig(max_steps=1500, lr=1e-3, warmup_steps=100, val_every_n_steps=500),
    )
