"""Interoperability commands: ``convert``, ``export``, ``fit-projection``, ``project-latents``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from vqgan.cli import command
from vqgan.cli.stage1 import eval_loaders
from vqgan.config import DataConfig


@command("convert")
def convert(
    input: str, output: str, from_: Literal["auto", "taming", "llamagen", "diffusers", "vqgan"] = "auto",
    to: Literal["vqgan", "diffusers"] = "vqgan", config: str | None = None, allow_stand_ins: bool = False,
    l2_normalize: bool | None = None, use_ema: bool = False,
) -> int:
    """Convert a taming, LlamaGen or diffusers tokenizer into our folder format (or ours into diffusers').

    Args:
        input: taming .ckpt, LlamaGen .pt, diffusers VQModel folder, or our folder / .ckpt.
        output: folder to write.
        from_: format of --input (auto detects it).
        to: vqgan: config.json + model.safetensors; diffusers: a diffusers VQModel folder.
        config: taming: the YAML config (found automatically next to the .ckpt).
        allow_stand_ins: read checkpoints that pickle Python objects (Lightning callbacks, argparse namespaces) with
            inert placeholders instead of refusing them; no code from the file runs either way.
        l2_normalize: LlamaGen: cosine codebook lookup (default: from the checkpoint's args, else true).
        use_ema: LlamaGen: load the 'ema' weights.
    """
    from vqgan.config import to_dict
    from vqgan.interop import load_pretrained, save_diffusers
    from vqgan.models.pretrained import save_pretrained

    model = load_pretrained(input, source=from_, config=config, allow_stand_ins=allow_stand_ins,
                            l2_normalize=l2_normalize, use_ema=use_ema)
    (save_diffusers if to == "diffusers" else save_pretrained)(model, output)
    n_params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"output": output, "format": to, "parameters": n_params, "config": to_dict(model.config)}))
    return 0


@command("export")
def export(
    ckpt: str, output: str, format: Literal["onnx", "torchscript"] = "onnx", resolution: int | None = None,
    onnx_exporter: Literal["dynamo", "legacy"] = "dynamo", opset: int = 18, allow_stand_ins: bool = False,
) -> int:
    """Export a tokenizer's encode / decode / decode_codes graphs to ONNX or TorchScript.

    Args:
        ckpt: the tokenizer, in any format `vqgan convert` reads (folder or file).
        output: folder to write.
        format: graph format.
        resolution: example image size for tracing (default: the model's).
        onnx_exporter: dynamo: torch.export + onnxscript (PyTorch's default); legacy: TorchScript-based.
        opset: ONNX opset.
        allow_stand_ins: as for `vqgan convert`: placeholders for pickled Python objects, no code runs.
    """
    from vqgan.interop import load_pretrained
    from vqgan.interop.export import export_onnx, export_torchscript

    model = load_pretrained(ckpt, allow_stand_ins=allow_stand_ins)
    written = (export_onnx(model, output, resolution, exporter=onnx_exporter, opset=opset) if format == "onnx"
               else export_torchscript(model, output, resolution))
    print(json.dumps({k: str(v) for k, v in written.items()}))
    return 0


@command("fit-projection")
def fit_projection(
    ckpt: str, output: str, channels: int = 4, steps: int = 500, lr: float = 1e-3, kernel_size: int = 1,
    source: Literal["quantized", "continuous"] = "quantized", latent_weight: float = 0.1,
    train_decoder: bool = False, train_encoder: bool = False, data: DataConfig | str | None = None, seed: int = 0,
    device: str = "auto",
) -> int:
    """Fit a learned projection of a tokenizer's latents to N channels (for downstream models).

    Args:
        ckpt: the tokenizer, in any format `vqgan convert` reads.
        output: folder for projection.json + projection.safetensors.
        channels: channels N of the projected latents.
        steps: optimisation steps.
        lr: Adam learning rate.
        kernel_size: 1: per-position linear map; 3: 3x3 convs.
        source: which latents are projected.
        latent_weight: weight of the latent reconstruction term.
        train_decoder: train the decoder jointly (saved under OUTPUT/decoder/).
        train_encoder: train the encoder jointly too: the projection sits at the encoder output, as seed 004 describes
            (the tokenizer is saved under OUTPUT/decoder/; encode with that one).
        data: images to fit on: a folder of images, a YAML file of data options, or --data.KEY options (default: the
            built-in photos at the tokenizer's resolution).
    """
    import torch

    from vqgan.interop import load_pretrained
    from vqgan.interop.projection import _images, save_projection
    from vqgan.interop.projection import fit_projection as fit

    torch.manual_seed(seed)
    model = load_pretrained(ckpt)
    train_loader, val_loader = eval_loaders(model, data, seed=seed)
    held_out = _images(next(iter(val_loader)))
    result = fit(model, train_loader, channels, steps, lr, kernel_size, source, latent_weight, train_decoder, device,
                 seed, eval_images=held_out, train_encoder=train_encoder)
    save_projection(result.projection, output, result.summary, model if train_decoder or train_encoder else None)
    print(json.dumps(result.summary))
    return 0


@command("project-latents")
def project_latents(
    ckpt: str, projection: str, output: str, split: Literal["train", "val"] = "val", normalize: bool = True,
    max_items: int | None = None, data: DataConfig | str | None = None, device: str = "auto",
) -> int:
    """Encode images and write their projected N-channel latents (one safetensors file).

    Args:
        ckpt: the tokenizer, in any format `vqgan convert` reads.
        projection: folder written by `vqgan fit-projection`.
        output: the .safetensors file to write.
        split: which split to encode.
        normalize: store (p - mean) / std per channel.
        max_items: stop after this many images.
        data: images to encode: a folder of images, a YAML file of data options, or --data.KEY options (default: the
            built-in photos at the tokenizer's resolution).
    """
    import torch
    from safetensors.torch import save_file

    from vqgan.interop import load_pretrained
    from vqgan.interop.projection import _images, load_projection, source_latents

    proj = load_projection(projection).to(device)
    # A projection fitted jointly with the tokenizer saved that tokenizer beside it: encode with it.
    joint = Path(projection) / "decoder"
    model = load_pretrained(str(joint) if joint.is_dir() else ckpt).to(device)
    train_loader, val_loader = eval_loaders(model, data)
    chunks = []
    with torch.no_grad():
        for batch in train_loader if split == "train" else val_loader:
            p = proj.project(source_latents(model, _images(batch).to(device), proj.config.source))
            chunks.append((proj.normalize(p) if normalize else p).cpu())
            if max_items is not None and sum(map(len, chunks)) >= max_items:
                break
    latents = torch.cat(chunks)[:max_items]
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"latents": latents.contiguous(), "mean": proj.mean.cpu(), "std": proj.std.cpu()}, str(out),
              metadata={"normalized": str(normalize), "source": proj.config.source})
    print(json.dumps({"output": str(out), "shape": list(latents.shape)}))
    return 0
