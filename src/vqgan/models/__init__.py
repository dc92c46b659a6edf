"""Autoencoders, discriminators and (later) priors."""

from vqgan.models.autoencoder import Decoder, Encoder, VQModel
from vqgan.models.discriminator import PatchDiscriminator
from vqgan.models.outputs import EncodeOutput, VQModelOutput

__all__ = ["Decoder", "EncodeOutput", "Encoder", "PatchDiscriminator", "VQModel", "VQModelOutput"]
