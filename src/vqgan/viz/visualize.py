"""Every picture of a trained tokenizer in one call (seeds 000 and 002), indexed in ``OUTPUT/figures.json``
for the HTML report. Each kind is one function of :data:`FIGURES`, taking the shared :class:`Inputs` and
returning its records, or raising :class:`Skipped` with the reason the report shows."""

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property, partial
from pathlib import Path

import torch

from vqgan.metrics.reconstruction import frames, psnr
from vqgan.models.video import reconstruct_video
from vqgan.viz import latent
from vqgan.viz.codebook import plot_token_map, save_codebook_atlas
from vqgan.viz.curves import loss_curve_figures
from vqgan.viz.grids import save_comparison
from vqgan.viz.plots import FigureRecord, diagnostics_figures, plot_usage_histogram
from vqgan.viz.video import save_video_reconstruction


class Skipped(Exception):
    """A kind of picture that can't be drawn for this model, data or run; the message says why."""


@dataclass
class Inputs:
    """What the figure functions read, with the latents, codebook and code histogram computed once."""

    model: torch.nn.Module
    images: torch.Tensor
    out: Path
    run_dir: Path | None
    counts: torch.Tensor | None
    max_points: int
    tsne_points: int
    grid_images: int
    atlas_codes: int
    say: Callable[[str], None]

    def __post_init__(self):
        self.is_video = self.images.dim() == 5
        self.encodes_clips = self.is_video and hasattr(self.model, "time_factor")  # a 3-D tokenizer on clips
        batch = (self.images, 4) if self.encodes_clips else (self.frames, 64)
        self.latents = latent.collect_latents(self.model, *batch)
        try:  # the (K, D) codes in the space the encoder writes (None when implicit or projected)
            cb = self.model.quantize.codebook.detach().float().cpu()
            self.codebook = cb if cb.dim() == 2 and cb.shape[1] == self.model.quantize.dim else None
        except (NotImplementedError, AttributeError):
            self.codebook = None
        hits = torch.bincount(self.latents["indices"], minlength=self.model.quantize.codebook_size)
        self.histogram = hits if self.counts is None else self.counts

    @cached_property
    def frames(self) -> torch.Tensor:
        """The images, or the clips' frames as images."""
        if self.encodes_clips:
            raise Skipped("image grids, codebook atlas and interpolation skipped: a spatio-temporal tokenizer "
                          "encodes clips, not single frames (see the video pictures)")
        return frames(self.images) if self.is_video else self.images

    @cached_property
    def busiest(self) -> list[int]:
        """Frames by decreasing pixel std: the most textured make the clearest token map and interpolation."""
        return self.frames.flatten(1).float().std(1).argsort(descending=True).tolist()


def video_figures(d: Inputs) -> list[FigureRecord]:
    """MP4 and GIF of the first clip ``(C, T, H, W)`` next to its reconstruction, its frame grid and temporal
    consistency, written by :mod:`vqgan.viz.video` (frame by frame for an image tokenizer)."""
    if not d.is_video:
        return []
    clip, scale = d.images[0], max(1, 96 // d.images.shape[-1])
    rec = reconstruct_video(d.model, clip)[0].clamp(-1, 1).cpu()
    try:
        result = save_video_reconstruction(clip.cpu(), rec, d.out, "video", scale=scale)
    except Exception as e:  # e.g. a PyAV build without an H.264 encoder: keep the GIF and the other pictures
        d.say(f"MP4 not written ({e}); writing the GIF only")
        result = save_video_reconstruction(clip.cpu(), rec, d.out, "video", scale=scale, formats=("gif",))
    files, note = result["files"], f"mean PSNR {result['psnr']:.2f} dB over {clip.shape[1]} frames"
    return [
        *(FigureRecord(f"video_{fmt}", f"Video reconstruction ({fmt.upper()})", files[fmt], "Video",
                       f"original | reconstruction; {note}") for fmt in ("gif", "mp4") if fmt in files),
        FigureRecord("video_frames", "Video frames", files["frames"], "Video",
                     "originals (top), reconstructions with PSNR"),
        FigureRecord("video_temporal", "Temporal consistency", files["temporal"], "Video",
                     "per-frame PSNR, frame-to-frame change and flicker, x-t slices"),
    ]


def reconstruction_figures(d: Inputs) -> list[FigureRecord]:
    """Originals against reconstructions, with per-image PSNR."""
    x = d.frames[: d.grid_images]
    rec = d.model(x).reconstruction.clamp(-1, 1)
    path = save_comparison(x.cpu(), rec.cpu(), d.out / "reconstructions.png", scale=max(1, 96 // x.shape[-1]),
                           captions=True)
    return [FigureRecord("reconstructions", "Originals and reconstructions", path, "Reconstructions",
                         "rows alternate originals and reconstructions; PSNR under each "
                         f"(mean {float(psnr(x, rec).mean()):.2f} dB)")]


def latent_and_codebook_figures(d: Inputs) -> list[FigureRecord]:
    """PCA and t-SNE of the encoder outputs with the codes, latent statistics, hits per code, the most used
    codes decoded, and the token map over an image (a clip's first frame for a 3-D tokenizer)."""
    lat, idx, cb, out = d.latents["latents"], d.latents["indices"], d.codebook, d.out
    what = "spatio-temporal latents of the clips and the codes" if d.encodes_clips else \
        "one joint PCA; points coloured by their code, crosses are codes sized by usage"
    pca = latent.plot_projection(lat, idx, cb, out / "latent_pca.png", "pca", d.max_points)
    tsne = latent.plot_projection(lat, idx, cb, out / "latent_tsne.png", "tsne", d.tsne_points)
    stats = latent.plot_latent_statistics(lat, cb, out / "latent_stats.png")
    unit = "clips" if d.encodes_clips else "images"
    hits = "hits per code on " + ("the evaluated images" if d.counts is not None else
                                  f"{len(d.latents['index_maps'])} {unit}")
    usage = plot_usage_histogram(d.histogram.cpu().numpy(), out / "codebook_usage.png")
    atlas, shown = save_codebook_atlas(d.model, out / "codebook_atlas.png", d.histogram.cpu().numpy(),
                                       max_codes=d.atlas_codes)
    records = [
        FigureRecord("pca", "PCA of encoder outputs and codes", pca, "Latent space", what),
        FigureRecord("tsne", "t-SNE of encoder outputs and codes", tsne, "Latent space",
                     f"seeded subsample of at most {d.tsne_points} encoder outputs"),
        FigureRecord("latent_stats", "Latent statistics", stats, "Latent space",
                     "per-dimension mean ± std and norm histograms"),
        FigureRecord("usage_histogram", "Codebook usage histogram", usage, "Codebook", hits),
        FigureRecord("atlas", "Codebook atlas", atlas, "Codebook",
                     f"the {len(shown)} most used codes, each decoded from a 2x2 map of itself"),
    ]
    k, path = d.model.quantize.codebook_size, out / "token_map.png"
    if d.encodes_clips:
        path = plot_token_map(d.images[0][:, 0], d.latents["index_maps"][0][0], path, k)
        return records + [FigureRecord("token_map", "Token map (first latent frame)", path, "Codebook",
                                       "codes of the first latent frame over the first frame of the clip")]
    path = plot_token_map(d.frames[d.busiest[0]], d.latents["index_maps"][d.busiest[0]], path, k)
    return records + [FigureRecord("token_map", "Token map", path, "Codebook",
                                   "the code of every latent position over the image")]


def interpolation_figures(d: Inputs) -> list[FigureRecord]:
    """Decodes of interpolated latents between the two most textured images."""
    i0, i1 = d.busiest[0], d.busiest[min(1, len(d.busiest) - 1)]
    path = latent.save_interpolation(d.model, d.frames[i0], d.frames[i1], d.out / "interpolation.png", 8,
                                     max(2, 96 // d.frames.shape[-1]))
    return [FigureRecord("interpolation", "Latent interpolation", path, "Latent space",
                         "decodes of quantized linear interpolations of the encoder outputs of two images")]


def _from_run(kind: str, draw: Callable[[Path, Path], list[FigureRecord]], d: Inputs) -> list[FigureRecord]:
    """The run's ``kind`` of figures, drawn from its folder."""
    if d.run_dir is None:
        raise Skipped(f"{kind} skipped: no --run-dir given")
    try:
        return draw(d.run_dir, d.out)
    except FileNotFoundError as e:
        raise Skipped(f"{kind} skipped: {e}") from None


FIGURES: tuple[Callable[[Inputs], list[FigureRecord]], ...] = (
    video_figures,
    reconstruction_figures,
    latent_and_codebook_figures,
    interpolation_figures,
    partial(_from_run, "training diagnostics", diagnostics_figures),
    partial(_from_run, "loss curves", loss_curve_figures),
)


@torch.no_grad()
def visualize_model(
    model: torch.nn.Module, images: torch.Tensor, output_dir: str | Path, run_dir: str | Path | None = None,
    counts: torch.Tensor | None = None, max_points: int = 2000, tsne_points: int = 600, grid_images: int = 16,
    atlas_codes: int = 64, say: Callable[[str], None] = print,
) -> list[FigureRecord]:
    """Write every picture of :data:`FIGURES` for ``model`` on ``images`` (``(B, C, H, W)`` or video
    ``(B, C, T, H, W)`` in [-1, 1]) under ``output_dir``, indexed in ``figures.json``; returns the records.
    ``counts``: a code histogram over a whole evaluation set (default: from ``images``)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = None if run_dir is None else Path(run_dir)
    d = Inputs(model.eval(), images.to(next(model.parameters()).device), out, run_dir, counts, max_points,
               tsne_points, grid_images, atlas_codes, say)
    records, notes = [], []
    for figures in FIGURES:
        try:
            records += figures(d)
        except Skipped as e:
            if str(e) not in notes:  # several kinds can share one reason
                notes.append(str(e))
                say(str(e))
    index = {"figures": [{**asdict(r), "path": os.path.relpath(r.path, out)} for r in records],
             "notes": notes, "statistics": latent.latent_statistics(d.latents["latents"], d.codebook)}
    (out / "figures.json").write_text(json.dumps(index, indent=2))
    return records
