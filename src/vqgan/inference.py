"""Using trained models, with torch only (no Lightning): reconstruct image files with a tokenizer, and sample
images from a prior (generate token maps, decode them with the tokenizer, write grids and files).

Bad input: a folder's unreadable files (corrupt, truncated, not an image) are skipped with a warning that names
each one, and counted (:attr:`Reconstructions.skipped`), so that one bad file never loses the rest of the folder;
a single file named on its own that can't be read raises ``ValueError`` with a one-line message.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vqgan.config import ConfigError
from vqgan.data.images import IMAGE_EXTENSIONS, list_images, load_image
from vqgan.data.tokens import TokenDataset, TokenFolderError, resolve_token_folders
from vqgan.data.transforms import crop, resize_shorter, to_tensor
from vqgan.metrics.codebook import sample_code_metrics
from vqgan.metrics.reconstruction import psnr, to_unit
from vqgan.models.io import load_model, load_prior
from vqgan.viz.samples import to_pil

log = logging.getLogger(__name__)


@dataclass
class Reconstructions:
    """What :func:`reconstruct_files` did.

    Attributes:
        records: one ``{"file", "psnr", "size"}`` per reconstructed image, in file order.
        skipped: one ``{"file", "error"}`` per file that could not be read (each also logged as a warning).
    """

    records: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


@torch.no_grad()
def reconstruct_files(
    model: torch.nn.Module, input_path: str | Path, output_dir: str | Path, resolution: int | None = None,
    full_size: bool = False, device: str = "cpu",
) -> Reconstructions:
    """Reconstruct an image file or every image under a folder.

    Each image is resized (shorter side) and centre-cropped to ``resolution`` (default: the model's), or, with
    ``full_size``, kept whole and cropped to a multiple of the downsampling factor. Writes ``NAME_rec.png`` and a
    side-by-side ``NAME_compare.png`` (original | reconstruction) per image; returns per-image PSNR records and
    the files skipped because they could not be read.

    Raises:
        ValueError: ``input_path`` is a single file that is not an image or can't be read.
    """
    input_path, output_dir = Path(input_path), Path(output_dir)
    files = [input_path] if input_path.is_file() else list_images(input_path)
    if input_path.is_file() and input_path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"{input_path} is not an image ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    output_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    res = resolution or cfg.resolution
    f = cfg.spatial_factor
    model = model.to(device).eval()
    out = Reconstructions()
    for path in files:
        try:
            img = load_image(path, cfg.in_channels)
        except Exception as e:  # noqa: BLE001 - any decoder failure means "unreadable"
            if input_path.is_file():
                raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
            log.warning("skipping unreadable image %s: %s: %s", path, type(e).__name__, e)
            out.skipped.append({"file": str(path), "error": f"{type(e).__name__}: {e}"})
            continue
        if full_size:
            w, h = (img.width // f) * f, (img.height // f) * f
            img = img.crop((0, 0, w, h))
        else:
            img = crop(resize_shorter(img, res), res, random=False)
        x = to_tensor(img)[None].to(device)
        rec = model(x).reconstruction.clamp(-1, 1)
        stem = path.stem
        to_pil(to_unit(rec[0])).save(output_dir / f"{stem}_rec.png")
        to_pil(to_unit(torch.cat([x[0], rec[0]], dim=-1))).save(output_dir / f"{stem}_compare.png")
        out.records.append({"file": str(path), "psnr": float(psnr(x, rec)[0]), "size": [img.height, img.width]})
    return out


@torch.no_grad()
def decode_tokens(tokenizer: torch.nn.Module, tokens: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Decode ``(B, h, w)`` code indices with a stage-1 tokenizer to images in [-1, 1] (clamped)."""
    device = next(tokenizer.parameters()).device
    out = [
        tokenizer.decode_codes(tokens[i : i + batch_size].to(device)).clamp(-1, 1).cpu()
        for i in range(0, tokens.shape[0], batch_size)
    ]
    return torch.cat(out)


def resolve_class(class_: str | int | None, num_classes: int, class_names: list[str], num: int) -> torch.Tensor | None:
    """Labels ``(num,)`` for ``--class``: ``None`` (unconditional), an index, a class name, or ``all`` (cycle)."""
    if class_ is None or class_ == "":
        return None
    if num_classes == 0:
        raise ValueError("this prior is unconditional (model.num_classes=0); drop --class")
    if str(class_) == "all":
        return torch.arange(num) % num_classes
    if str(class_).lstrip("-").isdigit():
        k = int(class_)
    elif class_ in class_names:
        k = class_names.index(class_)
    else:
        raise ValueError(f"--class {class_!r}: not an index in [0, {num_classes}) nor one of {class_names}")
    if not 0 <= k < num_classes:
        raise ValueError(f"--class {k} is out of range [0, {num_classes})")
    return torch.full((num,), k, dtype=torch.long)


@torch.no_grad()
def generate_images(
    prior: str | Path,
    output: str | Path,
    tokenizer: str | Path | None = None,
    num: int = 16,
    class_: str | int | None = None,
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    steps: int = 8,
    use_cache: bool = True,
    seed: int = 0,
    ncol: int = 8,
    device: str = "cpu",
) -> dict[str, Any]:
    """Sample ``num`` token maps from a prior checkpoint, decode them with the tokenizer and write
    ``OUTPUT/grid.png``, ``OUTPUT/images/sample_NNNN.png``, ``OUTPUT/tokens.safetensors`` (tokens and labels) and
    ``OUTPUT/codes.png`` (code usage against the data, when the token folder is still there)."""
    from safetensors.torch import save_file

    from vqgan.viz.plots import save_code_histogram
    from vqgan.viz.samples import save_image_grid, save_images

    model, cfg, meta = load_prior(prior, device)
    tok_path = tokenizer or meta.get("source", {}).get("tokenizer")
    if tok_path is None:
        raise ValueError("no tokenizer known for this prior: pass --tokenizer FILE")
    tok, _ = load_model(tok_path, device)
    if tok.quantize.codebook_size != cfg.model.vocab_size:
        raise ConfigError(
            f"tokenizer {tok_path} has {tok.quantize.codebook_size} codes but the prior models {cfg.model.vocab_size}"
        )
    names = list(meta.get("class_names", []))
    labels = resolve_class(class_, cfg.model.num_classes, names, num)
    g = torch.Generator(device=device).manual_seed(seed)
    kw: dict[str, Any] = dict(num=num, labels=None if labels is None else labels.to(device), temperature=temperature,
                              top_k=top_k, top_p=top_p, cfg_scale=cfg_scale, generator=g)
    start = time.perf_counter()
    if cfg.model.kind == "maskgit":
        tokens = model.generate(steps=min(steps, cfg.model.num_tokens), **kw)
    else:
        tokens = model.generate(use_cache=use_cache, **kw)
    seconds = time.perf_counter() - start
    images = decode_tokens(tok, tokens)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    save_image_grid(images, out / "grid.png", ncol=ncol)
    save_images(images, out / "images", [f"sample_{i:04d}" for i in range(num)])
    lab = labels if labels is not None else torch.full((num,), -1, dtype=torch.long)
    save_file({"tokens": tokens.cpu().contiguous(), "labels": lab.contiguous()}, str(out / "tokens.safetensors"))
    result: dict[str, Any] = {"output": str(out), "num": num, "kind": cfg.model.kind, "sample_seconds": round(seconds, 3)}
    tokens_dir = cfg.data.tokens
    if tokens_dir is not None:
        try:
            hist = TokenDataset(resolve_token_folders(tokens_dir)[0]).code_histogram()
            result.update({k: round(float(v), 4) for k, v in sample_code_metrics(tokens, hist).items()})
            save_code_histogram(tokens, hist, out / "codes.png")
        except TokenFolderError:
            pass
    return result
