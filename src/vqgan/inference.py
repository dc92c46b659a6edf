"""Using trained models with torch only (no Lightning): reconstruct image files with a tokenizer, and sample
images from a prior (generate token maps, decode them with the tokenizer, write grids and files)."""

from __future__ import annotations

import contextlib
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
    """What :func:`reconstruct_files` did: ``records``, one ``{"file", "psnr", "size"}`` per image in file
    order, and ``skipped``, one ``{"file", "error"}`` per unreadable file (each also logged as a warning)."""

    records: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


@torch.no_grad()
def reconstruct_tiled(model: torch.nn.Module, x: torch.Tensor, tile: int, batch_size: int = 64) -> torch.Tensor:
    """Reconstruct images ``x`` ``(B, C, H, W)`` as overlapping ``tile`` x ``tile`` windows (stride ``tile / 2``),
    blended with a tent weight that peaks at each window's centre.

    A tokenizer trained on small crops normalises (GroupNorm) and attends over a crop; over a whole photo those
    statistics change and the colours drift (the quick-start turns a green tree red), while windows of the training
    size stay in distribution. diffusers' VAE tiling blends overlapping tiles for the same reason.
    """
    import torch.nn.functional as F

    (b, c, h, w), stride = x.shape, max(1, tile // 2)
    ph, pw = (max(0, -(-(n - tile) // stride)) * stride + tile - n for n in (h, w))
    xp = F.pad(x, (0, pw, 0, ph), mode="replicate")
    cols = F.unfold(xp, tile, stride=stride)  # (B, C * tile * tile, L)
    patches = cols.transpose(1, 2).reshape(-1, c, tile, tile)
    rec = torch.cat([model(patches[i : i + batch_size]).reconstruction
                     for i in range(0, patches.shape[0], batch_size)])
    co = rec.shape[1]  # the decoder's channels (model.config.out_channels may differ from the input's)
    ramp = torch.arange(tile, device=x.device, dtype=x.dtype) + 0.5
    ramp = torch.minimum(ramp, tile - ramp)
    weight = (ramp[:, None] * ramp[None, :]).flatten().repeat(co)[None, :, None]  # (1, C_out * tile * tile, 1)
    cols = rec.reshape(b, -1, co * tile * tile).transpose(1, 2) * weight
    size = (h + ph, w + pw)
    out = F.fold(cols, size, tile, stride=stride) / F.fold(weight.expand_as(cols), size, tile, stride=stride)
    return out[..., :h, :w]


@torch.no_grad()
def reconstruct_files(
    model: torch.nn.Module, input_path: str | Path, output_dir: str | Path, resolution: int | None = None,
    full_size: bool = False, device: str = "cpu", tile: bool = True,
) -> Reconstructions:
    """Reconstruct an image file or every image under a folder: ``NAME_rec.png`` and ``NAME_compare.png``
    (original | reconstruction) per image, resized (shorter side) and centre-cropped to ``resolution``
    (default: the model's) or, with ``full_size``, cropped to a multiple of the downsampling factor and, with
    ``tile``, reconstructed in windows of the model's training resolution (:func:`reconstruct_tiled`).

    A folder's unreadable files are skipped with a warning and counted, so that one bad file never loses the
    rest; a single file that is not an image or can't be read raises ``ValueError``.
    """
    input_path, output_dir = Path(input_path), Path(output_dir)
    single = input_path.is_file()
    if single and input_path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"{input_path} is not an image ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    output_dir.mkdir(parents=True, exist_ok=True)
    cfg, f = model.config, model.config.spatial_factor
    res = resolution or cfg.resolution
    model = model.to(device).eval()
    out = Reconstructions()
    for path in [input_path] if single else list_images(input_path):
        try:
            img = load_image(path, cfg.in_channels)
        except Exception as e:  # noqa: BLE001 - any decoder failure means "unreadable"
            error = f"{type(e).__name__}: {e}"
            if single:
                raise ValueError(f"cannot read image {path}: {error}") from None
            log.warning("skipping unreadable image %s: %s", path, error)
            out.skipped.append({"file": str(path), "error": error})
            continue
        img = (img.crop((0, 0, img.width // f * f, img.height // f * f)) if full_size
               else crop(resize_shorter(img, res), res, random=False))
        x = to_tensor(img)[None].to(device)
        tiled = full_size and tile and max(x.shape[-2:]) > cfg.resolution
        rec = (reconstruct_tiled(model, x, cfg.resolution) if tiled else model(x).reconstruction).clamp(-1, 1)
        to_pil(to_unit(rec[0])).save(output_dir / f"{path.stem}_rec.png")
        to_pil(to_unit(torch.cat([x[0], rec[0]], dim=-1))).save(output_dir / f"{path.stem}_compare.png")
        out.records.append({"file": str(path), "psnr": float(psnr(x, rec)[0]),
                            "size": [img.height, img.width]})
    return out


@torch.no_grad()
def decode_tokens(tokenizer: torch.nn.Module, tokens: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Decode ``(B, h, w)`` code indices (``(B, t, h, w)`` token grids of clips) with a stage-1 tokenizer to
    images in [-1, 1] (clamped): ``(B, C, H, W)``, or clips ``(B, C, T, H, W)``. An image tokenizer decodes a
    token grid frame by frame."""
    device = next(tokenizer.parameters()).device
    if tokens.dim() == 4 and getattr(tokenizer.config, "arch", None) != "video3d":
        b, t = tokens.shape[:2]
        frames = decode_tokens(tokenizer, tokens.flatten(0, 1), batch_size)
        return frames.view(b, t, *frames.shape[1:]).transpose(1, 2)
    return torch.cat([tokenizer.decode_codes(tokens[i : i + batch_size].to(device)).clamp(-1, 1).cpu()
                      for i in range(0, tokens.shape[0], batch_size)])


def resolve_class(
    class_: str | int | None, num_classes: int, class_names: list[str], num: int
) -> torch.Tensor | None:
    """Labels ``(num,)`` for ``--class``: ``None`` (unconditional), an index, a name, or ``all`` (cycle)."""
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
        raise ValueError(f"--class {class_!r}: not an index in [0, {num_classes}) nor one of "
                         f"{class_names}")
    if not 0 <= k < num_classes:
        raise ValueError(f"--class {k} is out of range [0, {num_classes})")
    return torch.full((num,), k, dtype=torch.long)


def label_tensor(labels: torch.Tensor | None, num: int) -> torch.Tensor:
    """The labels as saved with samples: ``-1`` for every sample when unconditional."""
    return torch.full((num,), -1, dtype=torch.long) if labels is None else labels.cpu()


def _save_samples(out: Path, images: torch.Tensor, ncol: int, labels: torch.Tensor | None, key: str,
                  values: torch.Tensor) -> None:
    """``OUT/grid.png``, ``OUT/images/sample_NNNN.png`` and ``OUT/KEY.safetensors`` (values, labels)."""
    from safetensors.torch import save_file

    from vqgan.viz.samples import save_image_grid, save_images

    out.mkdir(parents=True, exist_ok=True)
    save_image_grid(images, out / "grid.png", ncol=ncol)
    save_images(images, out / "images", [f"sample_{i:04d}" for i in range(len(images))])
    tensors = {key: values.cpu().contiguous(), "labels": label_tensor(labels, len(images)).contiguous()}
    save_file(tensors, str(out / f"{key}.safetensors"))


@torch.no_grad()
def generate_images(
    prior: str | Path, output: str | Path, tokenizer: str | Path | None = None, num: int = 16,
    class_: str | int | None = None, cfg_scale: float = 1.0, temperature: float = 1.0,
    top_k: int | None = None, top_p: float | None = None, steps: int | None = None, use_cache: bool = True,
    seed: int = 0, ncol: int = 8, device: str = "cpu", sampler: str | None = None, snap: bool | None = None,
    prefix_frames: int = 0, inputs: str | Path | None = None, fps: float = 4.0,
) -> dict[str, Any]:
    """Sample ``num`` token maps from a prior checkpoint, decode them with the tokenizer and write
    ``OUTPUT/grid.png``, ``OUTPUT/images/sample_NNNN.png``, ``OUTPUT/tokens.safetensors`` (tokens and labels)
    and ``OUTPUT/codes.png`` (code usage against the data, when the token folder is still there).

    A flow prior writes ``OUTPUT/latents.safetensors`` instead of the tokens, and ``OUTPUT/trajectory.png``
    (decoded ODE states, noise on the left); ``steps``, ``sampler`` and ``snap`` default to the prior's
    config (MaskGIT: 8 steps). A prior over clips (``model.token_frames > 1``) writes video grids, and
    predicts frames after ``prefix_frames`` of ``inputs`` (:func:`~vqgan.video_generation.generate_clips`)."""
    model, cfg, meta = load_prior(prior, device)
    tok_path, out = tokenizer or meta.get("source", {}).get("tokenizer"), Path(output)
    if tok_path is None:
        raise ValueError("no tokenizer known for this prior: pass --tokenizer FILE")
    labels = resolve_class(class_, cfg.model.num_classes, list(meta.get("class_names", [])), num)
    on_device = None if labels is None else labels.to(device)
    g = torch.Generator(device=device).manual_seed(seed)
    if cfg.model.kind == "flow":  # sampled latents -> (unprojected) -> (snapped) -> decoded
        from vqgan.models.prior.latent_space import load_latent_decoder, sample_latent_images
        from vqgan.viz.samples import save_image_grid

        tok, projection = load_latent_decoder(tok_path, meta.get("projection"), device)
        snap = cfg.model.snap_to_codes if snap is None else snap
        columns = min(6, (steps or cfg.model.sample_steps) + 1)
        res = sample_latent_images(model, tok, num=num, labels=on_device, projection=projection, snap=snap,
                                   steps=steps, sampler=sampler, cfg_scale=cfg_scale, generator=g,
                                   trajectory_columns=columns)
        _save_samples(out, res.images, ncol, labels, "latents", res.latents)
        save_image_grid(res.trajectory[: min(4, num) * columns], out / "trajectory.png", ncol=columns)
        return {"output": str(out), "num": num, "kind": "flow", "sample_seconds": round(res.seconds, 3),
                "steps": steps or cfg.model.sample_steps, "sampler": sampler or cfg.model.sampler,
                "snap": snap}
    tok, _ = load_model(tok_path, device)
    if tok.quantize.codebook_size != cfg.model.vocab_size:
        raise ConfigError(f"tokenizer {tok_path} has {tok.quantize.codebook_size} codes but the prior models "
                          f"{cfg.model.vocab_size}")
    if cfg.model.token_frames > 1 or prefix_frames:
        from vqgan.video_generation import generate_clips

        if cfg.model.token_frames == 1:
            raise ValueError("--prefix-frames needs a prior over clips (model.token_frames > 1)")
        names, steps = list(meta.get("class_names", [])), min(steps or 8, cfg.model.num_tokens)
        return generate_clips(model, tok, output, labels, num, names, prefix_frames, inputs, cfg_scale,
                              temperature, top_k, top_p, steps, use_cache, seed, min(ncol, 8), fps, device)
    maskgit = cfg.model.kind == "maskgit"
    extra = {"steps": min(steps or 8, cfg.model.num_tokens)} if maskgit else {"use_cache": use_cache}
    start = time.perf_counter()
    tokens = model.generate(num=num, labels=on_device, top_k=top_k, top_p=top_p, temperature=temperature,
                            cfg_scale=cfg_scale, generator=g, **extra)
    seconds = time.perf_counter() - start
    _save_samples(out, decode_tokens(tok, tokens), ncol, labels, "tokens", tokens)
    result: dict[str, Any] = {"output": str(out), "num": num, "kind": cfg.model.kind,
                              "sample_seconds": round(seconds, 3)}
    if cfg.data.tokens is not None:
        from vqgan.viz.plots import save_code_histogram

        with contextlib.suppress(TokenFolderError):  # the token folder is gone: no comparison
            hist = TokenDataset(resolve_token_folders(cfg.data.tokens)[0]).code_histogram()
            result.update({k: round(float(v), 4) for k, v in sample_code_metrics(tokens, hist).items()})
            save_code_histogram(tokens, hist, out / "codes.png")
    return result
