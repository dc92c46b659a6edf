"""Interoperability commands: ``convert``, ``export``, ``fit-projection``, ``project-latents``."""

from __future__ import annotations

import json

from vqgan.cli import command, resolve_device

_STAND_INS_HELP = (
    "read checkpoints that pickle Python objects (Lightning callbacks, argparse namespaces) with inert "
    "placeholders instead of refusing them; no code from the file runs either way"
)


def _load(path: str, allow_stand_ins: bool = False):
    from vqgan.interop import load_pretrained

    return load_pretrained(path, allow_stand_ins=allow_stand_ins)


@command("convert", "Convert a taming, LlamaGen or diffusers tokenizer into our folder format (or ours into diffusers').")
class Convert:
    @staticmethod
    def build(p, argv):
        p.add_argument("--from", dest="source", type=str, default="auto",
                       choices=["auto", "taming", "llamagen", "diffusers", "vqgan"], help="format of --input")
        p.add_argument("--input", type=str, required=True,
                       help="taming .ckpt, LlamaGen .pt, diffusers VQModel folder, or our folder / .ckpt")
        p.add_argument("--output", type=str, required=True, help="folder to write")
        p.add_argument("--to", type=str, default="vqgan", choices=["vqgan", "diffusers"],
                       help="vqgan: config.json + model.safetensors; diffusers: a diffusers VQModel folder")
        p.add_argument("--config", type=str, default=None, help="taming: the YAML config (found automatically next to the .ckpt)")
        p.add_argument("--allow-stand-ins", type=bool, default=False, help=_STAND_INS_HELP)
        p.add_argument("--l2-normalize", type=bool | None, default=None,
                       help="LlamaGen: cosine codebook lookup (default: from the checkpoint's args, else true)")
        p.add_argument("--use-ema", type=bool, default=False, help="LlamaGen: load the 'ema' weights")

    @staticmethod
    def run(a):
        from vqgan.config import to_dict
        from vqgan.interop import load_pretrained, save_diffusers
        from vqgan.models.pretrained import save_pretrained

        model = load_pretrained(a.input, source=a.source, config=a.config, allow_stand_ins=a.allow_stand_ins,
                                l2_normalize=a.l2_normalize, use_ema=a.use_ema)
        if a.to == "diffusers":
            save_diffusers(model, a.output)
        else:
            save_pretrained(model, a.output)
        n_params = sum(p.numel() for p in model.parameters())
        print(json.dumps({"output": a.output, "format": a.to, "parameters": n_params, "config": to_dict(model.config)}))
        return 0


@command("export", "Export a tokenizer's encode / decode / decode_codes graphs to ONNX or TorchScript.")
class Export:
    @staticmethod
    def build(p, argv):
        p.add_argument("--ckpt", type=str, required=True, help="any format `vqgan convert` reads (folder or file)")
        p.add_argument("--format", type=str, default="onnx", choices=["onnx", "torchscript"], help="graph format")
        p.add_argument("--output", type=str, required=True, help="folder to write")
        p.add_argument("--resolution", type=int, default=None, help="example image size for tracing (default: the model's)")
        p.add_argument("--onnx-exporter", type=str, default="dynamo", choices=["dynamo", "legacy"],
                       help="dynamo: torch.export + onnxscript (PyTorch's default); legacy: TorchScript-based")
        p.add_argument("--opset", type=int, default=18, help="ONNX opset")
        p.add_argument("--allow-stand-ins", type=bool, default=False, help=_STAND_INS_HELP)

    @staticmethod
    def run(a):
        from vqgan.interop.export import export_onnx, export_torchscript

        model = _load(a.ckpt, a.allow_stand_ins)
        if a.format == "onnx":
            written = export_onnx(model, a.output, a.resolution, exporter=a.onnx_exporter, opset=a.opset)
        else:
            written = export_torchscript(model, a.output, a.resolution)
        print(json.dumps({k: str(v) for k, v in written.items()}))
        return 0


def _add_data(p):
    from vqgan.config import DataConfig

    p.add_class_arguments(DataConfig, "data", help="images to fit on / encode (default: the built-in photos)")


def _data_config(a, model):
    from vqgan.config import DataConfig, ExperimentConfig, from_dict

    data = from_dict(DataConfig, a.data.as_dict())
    return ExperimentConfig(model=model.config, data=data)


@command("fit-projection", "Fit a learned projection of a tokenizer's latents to N channels (for downstream models).")
class FitProjection:
    @staticmethod
    def build(p, argv):
        p.add_argument("--ckpt", type=str, required=True, help="the tokenizer (any format `vqgan convert` reads)")
        p.add_argument("--output", type=str, required=True, help="folder for projection.json + projection.safetensors")
        p.add_argument("--channels", type=int, default=4, help="channels N of the projected latents")
        p.add_argument("--steps", type=int, default=500, help="optimisation steps")
        p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
        p.add_argument("--kernel-size", type=int, default=1, help="1: per-position linear map; 3: 3x3 convs")
        p.add_argument("--source", type=str, default="quantized", choices=["quantized", "continuous"],
                       help="which latents are projected")
        p.add_argument("--latent-weight", type=float, default=0.1, help="weight of the latent reconstruction term")
        p.add_argument("--train-decoder", type=bool, default=False,
                       help="train the decoder jointly (saved under OUTPUT/decoder/)")
        p.add_argument("--train-encoder", type=bool, default=False,
                       help="train the encoder jointly too: the projection at the encoder output (saved under OUTPUT/decoder/)")
        p.add_argument("--device", type=str, default="auto", help="cpu, cuda, or auto")
        p.add_argument("--seed", type=int, default=0, help="random seed")
        _add_data(p)

    @staticmethod
    def run(a):
        import torch

        from vqgan.interop.projection import _images, fit_projection, save_projection
        from vqgan.train.fit import build_loaders

        torch.manual_seed(a.seed)
        model = _load(a.ckpt)
        cfg = _data_config(a, model)
        cfg.train.seed = a.seed
        train_loader, val_loader = build_loaders(cfg)
        held_out = _images(next(iter(val_loader)))
        fit = fit_projection(model, train_loader, a.channels, a.steps, a.lr, a.kernel_size, a.source,
                             a.latent_weight, a.train_decoder, resolve_device(a.device), a.seed, eval_images=held_out,
                             train_encoder=a.train_encoder)
        save_projection(fit.projection, a.output, fit.summary, model if a.train_decoder or a.train_encoder else None)
        print(json.dumps(fit.summary))
        return 0


@command("project-latents", "Encode images and write their projected N-channel latents (one safetensors file).")
class ProjectLatents:
    @staticmethod
    def build(p, argv):
        p.add_argument("--ckpt", type=str, required=True, help="the tokenizer (any format `vqgan convert` reads)")
        p.add_argument("--projection", type=str, required=True, help="folder written by `vqgan fit-projection`")
        p.add_argument("--output", type=str, required=True, help="the .safetensors file to write")
        p.add_argument("--split", type=str, default="val", choices=["train", "val"], help="which split to encode")
        p.add_argument("--normalize", type=bool, default=True, help="store (p - mean) / std per channel")
        p.add_argument("--max-items", type=int, default=None, help="stop after this many images")
        p.add_argument("--device", type=str, default="auto", help="cpu, cuda, or auto")
        _add_data(p)

    @staticmethod
    def run(a):
        from pathlib import Path

        import torch
        from safetensors.torch import save_file

        from vqgan.interop.projection import _images, load_projection, source_latents
        from vqgan.train.fit import build_loaders

        device = resolve_device(a.device)
        model = _load(a.ckpt).to(device)
        proj = load_projection(a.projection).to(device)
        if (Path(a.projection) / "decoder").is_dir():
            model = _load(str(Path(a.projection) / "decoder")).to(device)
        train_loader, val_loader = build_loaders(_data_config(a, model))
        chunks, n = [], 0
        with torch.no_grad():
            for batch in train_loader if a.split == "train" else val_loader:
                p = proj.project(source_latents(model, _images(batch).to(device), proj.config.source))
                chunks.append((proj.normalize(p) if a.normalize else p).cpu())
                n += p.shape[0]
                if a.max_items is not None and n >= a.max_items:
                    break
        latents = torch.cat(chunks)[: a.max_items]
        out = Path(a.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({"latents": latents.contiguous(), "mean": proj.mean.cpu(), "std": proj.std.cpu()}, str(out),
                  metadata={"normalized": str(a.normalize), "source": proj.config.source})
        print(json.dumps({"output": str(out), "shape": list(latents.shape)}))
        return 0
