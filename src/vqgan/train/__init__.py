"""Training: the Lightning module, callbacks, checkpoint helpers and ``fit``."""

from vqgan.train.checkpoint import AtomicCheckpointIO, CheckpointError, load_checkpoint_file, load_model
from vqgan.train.fit import fit
from vqgan.train.module import NonFiniteLossError, VQGANModule

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "NonFiniteLossError",
    "VQGANModule",
    "fit",
    "load_checkpoint_file",
    "load_model",
]
