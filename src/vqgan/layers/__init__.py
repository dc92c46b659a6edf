"""Building blocks shared by the encoders, decoders and discriminators."""

from vqgan.layers.attention import AttnBlock
from vqgan.layers.resnet import Downsample, ResnetBlock, Upsample, group_norm

__all__ = ["AttnBlock", "Downsample", "ResnetBlock", "Upsample", "group_norm"]
