"""Training: the Lightning module, callbacks, checkpoint helpers and ``fit``. Loading a trained model needs none of
this: see :mod:`vqgan.models.io`."""

from vqgan.train.checkpoint import AtomicCheckpointIO
from vqgan.train.fit import fit
from vqgan.train.module import NonFiniteLossError, VQGANModule

__all__ = ["AtomicCheckpointIO", "NonFiniteLossError", "VQGANModule", "fit"]
