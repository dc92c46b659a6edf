"""Every picture of a trained tokenizer in one call (seed 000's five kinds and seed 002's codebook diagnostics),
indexed in ``OUTPUT/figures.json`` for the HTML report.

1. originals against reconstructions, with per-image PSNR;
2. PCA and t-SNE projections of encoder outputs and of the codebook, latent statistics;
3. codebook usage histogram, codebook atlas, token map overlaid on an image;
4. latent interpolation between two samples;
5. video reconstructions (GIF and MP4) when the data is video;
6. the run's saved diagnostics: usage and perplexity over time, code gradient norms and heatmap, code norms and
   their histogram over time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from vqgan.metrics.reconstruction import psnr
from vqgan.viz.codebook import plot_token_map, save_codebook_atlas
from vqgan.viz.grids import save_comparison
from vqgan.viz.latent import (
    _codebook_in_latent_space,
    collect_latents,
    latent_statistics,
    plot_latent_statistics,
    plot_projection,
    save_interpolation,
)
from vqgan.viz.plots import FigureRecord, diagnostics_figures, plot_usage_histogram

log = logging.getLogger(__name__)


def is_video_model(model: torch.nn.Module) -> bool:
    """A spatio-temporal tokenizer (encodes clips, not frames)."""
    return hasattr(model, "time_factor")


def _video_figures(model: torch.nn.Module, clips: torch.Tensor, out: Path, say: Callable[[str], None]) -> tuple[list[FigureRecord], str | None]:
    """MP4 and GIF of the first clip ``(C, T, H, W)`` next to its reconstruction, its frame grid and temporal
    consistency, written by :mod:`vqgan.viz.video` (frame by frame for an image tokenizer)."""
    try:
        from vqgan.models.video import reconstruct_video
        from vqgan.viz.video import save_video_reconstruction
    except ImportError as e:
        return [], f"video reconstructions skipped: the video modules are not available ({e})"
    clip = clips[0]
    rec, _ = reconstruct_video(model, clip)
    scale = max(1, 96 // clip.shape[-1])
    try:
        result = save_video_reconstruction(clip.cpu(), rec.clamp(-1, 1).cpu(), out, "video", scale=scale)
    except Exception as e:  # e.g. a PyAV build without an H.264 encoder: keep the GIF and the other pictures
        say(f"MP4 not written ({e}); writing the GIF only")
        result = save_video_reconstruction(clip.cpu(), rec.clamp(-1, 1).cpu(), out, "video", scale=scale, formats=("gif",))
    files = result["files"]
    section, psnr_note = "Video", f"mean PSNR {result['psnr']:.2f} dB over {clip.shape[1]} frames"
    records = [FigureRecord(f"video_{fmt}", f"Video reconstruction ({fmt.upper()})", files[fmt], section,
                            f"original | reconstruction; {psnr_note}") for fmt in ("gif", "mp4") if fmt in files]
    records.append(FigureRecord("video_frames", "Video frames", files["frames"], section, "originals (top), reconstructions with PSNR"))
    records.append(FigureRecord("video_temporal", "Temporal consistency", files["temporal"], section,
                                "per-frame PSNR, frame-to-frame change and flicker, x-t slices"))
    return records, None


@torch.no_grad()
def visualize_model(
    model: torch.nn.Module,
    images: torch.Tensor,
    output_dir: str | Path,
    run_dir: str | Path | None = None,
    counts: torch.Tensor | None = None,
    max_points: int = 2000,
    tsne_points: int = 600,
    grid_images: int = 16,
    atlas_codes: int = 64,
    say: Callable[[str], None] = print,
) -> list[FigureRecord]:
    """Write every picture for ``model`` on ``images`` (``(B, C, H, W)`` or video ``(B, C, T, H, W)`` in
    [-1, 1]) under ``output_dir`` and index them in ``figures.json``; returns the records.

    Args:
        run_dir: the training run folder, for the diagnostics plots (``RUN_DIR/diagnostics.npz``).
        counts: code histogram over a whole evaluation set (default: from ``images``).
        max_points / tsne_points: encoder outputs shown by PCA / t-SNE (seeded subsamples).
        say: where to print skipped pictures and their reasons.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    device = next(model.parameters()).device
    images = images.to(device)
    notes: list[str] = []
    records: list[FigureRecord] = []
    is_video = images.dim() == 5

    # 5. video clips, then their frames as images for everything else.
    if is_video:
        recs, why = _video_figures(model, images[:1], out, say)
        records += recs
        if why:
            notes.append(why)
            say(why)
    frames = images.transpose(1, 2).flatten(0, 1) if is_video else images
    stats: dict[str, Any] = {}
    if is_video and is_video_model(model):
        # A 3-D tokenizer encodes clips, not frames: latent space, usage and a token map from the clips.
        frames = None
        why = ("image grids, codebook atlas and interpolation skipped: a spatio-temporal tokenizer encodes clips, "
               "not single frames (see the video pictures)")
        notes.append(why)
        say(why)
        lat = collect_latents(model, images, batch_size=4)
        codebook = _codebook_in_latent_space(model)
        stats = latent_statistics(lat["latents"], codebook)
        k = model.quantize.codebook_size
        hist = counts if counts is not None else torch.bincount(lat["indices"], minlength=k)[:k]
        records += [
            FigureRecord("pca", "PCA of encoder outputs and codes",
                         str(plot_projection(lat["latents"], lat["indices"], codebook, out / "latent_pca.png", "pca", max_points)),
                         "Latent space", "spatio-temporal latents of the clips and the codes"),
            FigureRecord("tsne", "t-SNE of encoder outputs and codes",
                         str(plot_projection(lat["latents"], lat["indices"], codebook, out / "latent_tsne.png", "tsne", tsne_points)),
                         "Latent space", f"seeded subsample of at most {tsne_points} encoder outputs"),
            FigureRecord("latent_stats", "Latent statistics", str(plot_latent_statistics(lat["latents"], codebook, out / "latent_stats.png")),
                         "Latent space", "per-dimension mean ± std and norm histograms"),
            FigureRecord("usage_histogram", "Codebook usage histogram",
                         str(plot_usage_histogram(hist.cpu().numpy(), out / "codebook_usage.png")), "Codebook",
                         f"hits per code on {len(images)} clips"),
            FigureRecord("token_map", "Token map (first latent frame)",
                         str(plot_token_map(images[0][:, 0], lat["index_maps"][0][0], out / "token_map.png", k)), "Codebook",
                         "codes of the first latent frame over the first frame of the clip"),
        ]
    if frames is not None:
        # 1. reconstructions with per-image PSNR.
        x = frames[:grid_images]
        rec = model(x).reconstruction.clamp(-1, 1)
        scale = max(1, 96 // x.shape[-1])
        p = psnr(x, rec)
        records.append(FigureRecord(
            "reconstructions", "Originals and reconstructions",
            str(save_comparison(x.cpu(), rec.cpu(), out / "reconstructions.png", ncol=8, scale=scale, captions=True)),
            "Reconstructions", f"rows alternate originals and reconstructions; PSNR under each (mean {float(p.mean()):.2f} dB)",
        ))
        # 2. latent space.
        lat = collect_latents(model, frames)
        codebook = _codebook_in_latent_space(model)
        stats = latent_statistics(lat["latents"], codebook)
        records.append(FigureRecord("pca", "PCA of encoder outputs and codes",
                                    str(plot_projection(lat["latents"], lat["indices"], codebook, out / "latent_pca.png", "pca", max_points)),
                                    "Latent space", "one joint PCA; points coloured by their code, crosses are codes sized by usage"))
        records.append(FigureRecord("tsne", "t-SNE of encoder outputs and codes",
                                    str(plot_projection(lat["latents"], lat["indices"], codebook, out / "latent_tsne.png", "tsne", tsne_points)),
                                    "Latent space", f"seeded subsample of at most {tsne_points} encoder outputs"))
        records.append(FigureRecord("latent_stats", "Latent statistics",
                                    str(plot_latent_statistics(lat["latents"], codebook, out / "latent_stats.png")),
                                    "Latent space", "per-dimension mean ± std and norm histograms"))
        # 3. codebook.
        k = model.quantize.codebook_size
        hist = counts if counts is not None else torch.bincount(lat["indices"], minlength=k)[:k]
        records.append(FigureRecord("usage_histogram", "Codebook usage histogram",
                                    str(plot_usage_histogram(hist.cpu().numpy(), out / "codebook_usage.png")), "Codebook",
                                    "hits per code on the evaluated images" if counts is not None else f"hits per code on {len(frames)} images"))
        atlas, shown = save_codebook_atlas(model, out / "codebook_atlas.png", hist.cpu().numpy(), max_codes=atlas_codes)
        records.append(FigureRecord("atlas", "Codebook atlas", str(atlas), "Codebook",
                                    f"the {len(shown)} most used codes, each decoded from a 2x2 map of itself"))
        # The most textured images make the clearest token map and interpolation end points.
        busy = frames.flatten(1).float().std(1).argsort(descending=True).tolist()
        t0 = busy[0]
        records.append(FigureRecord("token_map", "Token map", str(plot_token_map(frames[t0], lat["index_maps"][t0], out / "token_map.png", k)),
                                    "Codebook", "the code of every latent position over the image"))
        # 4. interpolation between two different samples.
        i0, i1 = busy[0], busy[1] if len(busy) > 1 else busy[0]
        records.append(FigureRecord("interpolation", "Latent interpolation",
                                    str(save_interpolation(model, frames[i0], frames[i1], out / "interpolation.png", steps=8,
                                                           scale=max(2, 96 // frames.shape[-1]))),
                                    "Latent space", "decodes of quantized linear interpolations of the encoder outputs of two images"))
    # 6. training diagnostics.
    if run_dir is not None:
        try:
            records += diagnostics_figures(run_dir, out)
        except FileNotFoundError as e:
            notes.append(f"training diagnostics skipped: {e}")
            say(notes[-1])
    else:
        notes.append("training diagnostics skipped: no --run-dir given")
        say(notes[-1])
    index = {
        "figures": [{**asdict(r), "path": str(Path(r.path).relative_to(out)) if Path(r.path).is_relative_to(out) else r.path}
                    for r in records],
        "notes": notes,
        "statistics": stats,
    }
    (out / "figures.json").write_text(json.dumps(index, indent=2))
    return records
