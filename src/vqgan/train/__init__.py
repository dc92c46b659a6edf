"""Training: the Lightning modules, callbacks, checkpoints and ``fit`` (loading a model needs none)."""

from vqgan.train.checkpoint import AtomicCheckpointIO
from vqgan.train.fit import fit
from vqgan.train.module import NonFiniteLossError, VQGANModule

__all__ = ["AtomicCheckpointIO", "NonFiniteLossError", "VQGANModule", "fit"]
