"""Export a tokenizer's encoder and decoder as ONNX or TorchScript graphs, for use without this package.

Three graphs are written, each with dynamic batch and spatial sizes (multiples of the downsampling factor)::

    OUT/encode.onnx         image (B, C, H, W) float32 in [-1, 1] -> latents (B, D, h, w), quantized (B, D, h, w),
                            indices (B, h, w) int64
    OUT/decode.onnx         quantized (B, D, h, w) -> image (B, C, H, W)
    OUT/decode_codes.onnx   indices (B, h, w) int64 -> image (B, C, H, W)
    OUT/export.json         formats, shapes, downsampling factor, codebook size and the model config

(``.pt`` instead of ``.onnx`` for TorchScript, loadable with ``torch.jit.load`` alone.) ``latents`` are the
continuous ``quant_conv`` outputs, ``quantized`` the code vectors the decoder reads.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vqgan.config import to_dict
from vqgan.quantizers import VectorQuantizer
from vqgan.quantizers.vq import nearest_code

log = logging.getLogger(__name__)

GRAPHS = ("encode", "decode", "decode_codes")
# The inputs and outputs of each graph, and the dynamic axes of each name.
_NAMES = {"encode": (["image"], ["latents", "quantized", "indices"]), "decode": (["quantized"], ["image"]),
          "decode_codes": (["indices"], ["image"])}
_LATENT_AXES = {0: "batch", 2: "h", 3: "w"}
_AXES = {"image": {0: "batch", 2: "height", 3: "width"}, "latents": _LATENT_AXES, "quantized": _LATENT_AXES,
         "indices": {0: "batch", 1: "h", 2: "w"}}


def lookup_indices(quantizer: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Code indices of ``latents`` without the training-time bookkeeping (losses, histograms), so that the graph
    holds only the nearest-code search."""
    if isinstance(quantizer, VectorQuantizer) and latents.dim() == 4:
        # Explicit non-negative permutations: the legacy ONNX exporter emits invalid Transpose perms for movedim.
        b, d, h, w = latents.shape
        flat = latents.permute(0, 2, 3, 1).reshape(-1, d)
        flat = quantizer._normalize(quantizer.project_in(flat))
        idx = nearest_code(flat, quantizer.lookup_codebook, quantizer.search_chunk_size)
        return idx.reshape(b, h, w)
    return quantizer(latents).indices


def codes_from_indices(quantizer: nn.Module, indices: torch.Tensor) -> torch.Tensor:
    """``quantizer.indices_to_codes(indices)``, written with exportable operations for the plain VQ."""
    if isinstance(quantizer, VectorQuantizer) and indices.dim() == 3:
        codes = quantizer.project_out(F.embedding(indices, quantizer.lookup_codebook))  # (B, h, w, D)
        return codes.permute(0, 3, 1, 2)
    return quantizer.indices_to_codes(indices)


class EncodeGraph(nn.Module):
    """``image -> (latents, quantized, indices)`` of a :class:`~vqgan.models.VQModel` (eval mode)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latents = self.model.encode_latents(image)
        indices = lookup_indices(self.model.quantize, latents)
        return latents, codes_from_indices(self.model.quantize, indices), indices


class DecodeGraph(nn.Module):
    """``quantized latents -> image``, or with ``codes`` ``code indices -> image``."""

    def __init__(self, model: nn.Module, codes: bool = False):
        super().__init__()
        self.model = model
        self.codes = codes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.decode(codes_from_indices(self.model.quantize, x) if self.codes else x)


def _export(
    model: nn.Module, output_dir: str | Path, resolution: int | None, graphs: tuple[str, ...], fmt: str,
    write: Callable[[nn.Module, tuple[torch.Tensor, ...], str, Path], None], **extra: Any,
) -> dict[str, Path]:
    """Trace each graph, write it with ``write(graph, example inputs, name, path)``, then ``export.json``."""
    model = model.float().cpu().eval()
    cfg = model.config
    resolution = resolution or cfg.resolution
    if resolution % cfg.spatial_factor:
        raise ValueError(f"resolution {resolution} is not a multiple of the downsampling factor {cfg.spatial_factor}")
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, cfg.in_channels, resolution, resolution, generator=g) * 2 - 1
    with torch.no_grad():
        _, quantized, indices = EncodeGraph(model)(image)
    examples = {"encode": (image,), "decode": (quantized,), "decode_codes": (indices,)}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {name: out / f"{name}.{'onnx' if fmt == 'onnx' else 'pt'}" for name in graphs}
    for name, path in written.items():
        graph = EncodeGraph(model) if name == "encode" else DecodeGraph(model, codes=name == "decode_codes")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter
            write(graph.eval(), examples[name], name, path)
    manifest = {
        "format": fmt, **extra, "files": {k: p.name for k, p in written.items()},
        "inputs": {k: _NAMES[k][0] for k in written}, "outputs": {k: _NAMES[k][1] for k in written},
        "image_range": [-1.0, 1.0], "downsample_factor": cfg.spatial_factor, "latent_channels": cfg.embed_dim,
        "codebook_size": getattr(model.quantize, "codebook_size", None), "model_config": to_dict(cfg),
    }
    (out / "export.json").write_text(json.dumps(manifest, indent=2))
    log.info("wrote %s to %s", ", ".join(p.name for p in written.values()), out)
    return written


def export_onnx(
    model: nn.Module, output_dir: str | Path, resolution: int | None = None,
    exporter: Literal["dynamo", "legacy"] = "dynamo", opset: int = 18, graphs: tuple[str, ...] = GRAPHS,
) -> dict[str, Path]:
    """Write a :class:`~vqgan.models.VQModel` (eval mode, fp32, CPU) as the ONNX ``graphs`` of the module
    docstring in ``output_dir``, traced at ``resolution`` (default: the model's). ``exporter``: ``dynamo``
    (``torch.export`` + ``onnxscript``, PyTorch's default since 2.9; every quantizer) or ``legacy``
    (TorchScript-based, deprecated by PyTorch but faster; the vq/ema quantizers only)."""
    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise ImportError("the dynamo ONNX exporter needs onnxscript: pip install onnxscript (or pass "
                              "exporter='legacy')") from e
    elif exporter != "legacy":
        raise ValueError(f"unknown exporter {exporter!r}; choose 'dynamo' or 'legacy'")
    elif not isinstance(model.quantize, VectorQuantizer):
        # The legacy exporter writes invalid Transpose permutations for the movedim calls of the other quantizers.
        raise ValueError("the legacy ONNX exporter supports the vq/ema quantizers only, not "
                         f"{model.config.quantizer.kind!r}; use exporter='dynamo' (command line: "
                         "--onnx-exporter dynamo)")

    def write(graph: nn.Module, example: tuple[torch.Tensor, ...], name: str, path: Path) -> None:
        inputs, outputs = _NAMES[name]
        axes = {k: _AXES[k] for k in inputs + outputs}
        if exporter == "dynamo":
            shapes = ({i: torch.export.Dim.DYNAMIC for i in axes[inputs[0]]},)
            dynamic = dict(dynamic_shapes=shapes, external_data=False, verbose=False)
        else:
            dynamic = dict(dynamic_axes=axes)
        torch.onnx.export(graph, example, str(path), dynamo=exporter == "dynamo", input_names=inputs,
                          output_names=outputs, opset_version=opset, **dynamic)

    return _export(model, output_dir, resolution, graphs, "onnx", write, exporter=exporter, opset=opset)


def export_torchscript(
    model: nn.Module, output_dir: str | Path, resolution: int | None = None, graphs: tuple[str, ...] = GRAPHS
) -> dict[str, Path]:
    """Write ``encode.pt``, ``decode.pt`` and ``decode_codes.pt`` traced with ``torch.jit.trace``; load them with
    ``torch.jit.load`` (no vqgan import needed). Batch and spatial sizes stay dynamic."""

    def write(graph: nn.Module, example: tuple[torch.Tensor, ...], name: str, path: Path) -> None:
        with torch.no_grad():
            torch.jit.trace(graph, example, check_trace=False).save(str(path))

    return _export(model, output_dir, resolution, graphs, "torchscript", write)
