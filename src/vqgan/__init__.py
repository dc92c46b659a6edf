"""vqgan: train, evaluate, inspect and use vector-quantized image and video tokenizers (VQ-VAE, VQGAN) and
the transformer priors that generate from their codes. The public API is re-exported here."""

from vqgan.config import (
    ConfigError,
    DataConfig,
    DiscriminatorConfig,
    ExperimentConfig,
    LossConfig,
    ModelConfig,
    QuantizerConfig,
    TrainConfig,
    dump_config,
    load_config,
)
from vqgan.models import EncodeOutput, PatchDiscriminator, VQModel, VQModelOutput
from vqgan.models.io import CheckpointError, load_model, load_prior
from vqgan.models.prior import FlowPrior, GPTPrior, MaskGITPrior, PriorModelConfig, PriorOutput
from vqgan.quantizers import (
    FSQ,
    LFQ,
    Quantizer,
    QuantizerOutput,
    ResidualQuantizer,
    SimVQ,
    VectorQuantizer,
    build_quantizer,
)
from vqgan.registry import create_model, get_preset, list_presets, register_preset

__version__ = "0.1.0"


def fit(*args, **kwargs):
    """Train a stage-1 tokenizer (:func:`vqgan.train.fit.fit`): imported lazily, as it needs Lightning."""
    from vqgan.train.fit import fit as _fit

    return _fit(*args, **kwargs)


def load_pretrained(path, **kwargs):
    """Load our folder or ``.ckpt``, a diffusers folder, a taming ``.ckpt`` or a LlamaGen ``.pt`` as a
    :class:`VQModel` in eval mode (:func:`vqgan.interop.load_pretrained`); no code is executed."""
    from vqgan.interop import load_pretrained as _load

    return _load(path, **kwargs)


__all__ = [
    "CheckpointError", "ConfigError", "DataConfig", "DiscriminatorConfig", "EncodeOutput", "FSQ",
    "ExperimentConfig", "FlowPrior", "GPTPrior", "LFQ", "MaskGITPrior", "LossConfig", "ModelConfig",
    "PatchDiscriminator", "PriorModelConfig", "PriorOutput", "Quantizer", "QuantizerConfig",
    "QuantizerOutput", "ResidualQuantizer", "SimVQ", "TrainConfig", "VQModel", "VQModelOutput",
    "VectorQuantizer", "build_quantizer", "create_model", "dump_config", "fit", "get_preset",
    "list_presets", "load_config", "load_model", "load_pretrained", "load_prior", "register_preset",
]
