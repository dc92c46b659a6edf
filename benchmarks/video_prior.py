"""Figures of a class-conditional clip prior on moving digits: samples per class, frame prediction against the true
continuation, set distances to held-out clips, and whether the generated digits are the requested ones.

    python benchmarks/video_prior.py --prior RUN/checkpoints/last.ckpt --tokenizer TOK/checkpoints/last.ckpt \
        --out docs/video

Held-out clips are the validation clips of ``data.kind=moving_digits`` (a seed range disjoint from training) with
one digit, at the tokenizer's resolution and the prior's clip length. Everything is computed the same way for
every model, with two references: another draw of real clips (the floor of each distance) and the tokenizer's
reconstructions of real clips (what a perfect prior over these codes could reach). For frame prediction the
reference is "copy the last given frame".

Digit identity is read by an RBF support-vector classifier (scikit-learn) trained on 8x8 crops around the ink's
centroid of real training frames; its accuracy on real held-out frames is reported next to the one on generated
frames, so the number says how often a generated clip shows the requested digit as well as that reader can tell.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from vqgan.data import MovingDigits
from vqgan.inference import decode_tokens
from vqgan.metrics.distribution import clip_set_distances
from vqgan.metrics.video import frame_prediction_scores, motion_profile
from vqgan.models.io import load_model, load_prior
from vqgan.video_generation import clip_frames, encode_clips, generate_clips
from vqgan.viz.video import temporal_consistency_figure

VAL_SEED = 1_000_003  # data.kind=moving_digits' validation seed offset (vqgan.data)


def centroid_crops(frames: np.ndarray, size: int = 8) -> np.ndarray:
    """``size x size`` windows of ``(N, H, W)`` frames in [0, 1] centred on the ink's centroid, flattened."""
    n, h, w = frames.shape
    out = np.zeros((n, size * size), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    for i, f in enumerate(frames):
        m = f.sum()
        cy, cx = ((yy * f).sum() / m, (xx * f).sum() / m) if m > 1e-6 else (h / 2, w / 2)
        top = int(np.clip(round(cy - (size - 1) / 2), 0, h - size))
        left = int(np.clip(round(cx - (size - 1) / 2), 0, w - size))
        out[i] = f[top : top + size, left : left + size].ravel()
    return out


def digit_reader(resolution: int, frames: int, clips: int = 600):
    """An SVC reading the digit of a frame, trained on real training clips."""
    from sklearn.svm import SVC

    ds = MovingDigits(clips, resolution=resolution, frames=frames, num_digits=1, seed=0)
    x, y = [], []
    for i in range(clips):
        item = ds[i]
        f = ((item["image"][0] + 1) / 2).numpy()
        x.append(centroid_crops(f))
        y += [int(item["label"])] * f.shape[0]
    return SVC(C=10.0, gamma="scale").fit(np.concatenate(x), np.array(y))


def read_digits(reader, clips: torch.Tensor) -> np.ndarray:
    """Majority vote of the per-frame digits of every clip ``(N, 1, T, H, W)``."""
    f = ((clips[:, 0].clamp(-1, 1) + 1) / 2).numpy()
    n, t = f.shape[:2]
    per_frame = reader.predict(centroid_crops(f.reshape(n * t, *f.shape[2:]))).reshape(n, t)
    return np.array([np.bincount(r, minlength=10).argmax() for r in per_frame])


def prediction_figure(curves: dict[str, dict], prefix: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, s in curves.items():
        t = np.arange(len(s["psnr_per_frame"]))
        axes[0].plot(t, np.minimum(s["psnr_per_frame"], 40), "o-", label=name)
        axes[1].plot(t, s["ssim_per_frame"], "o-", label=name)
    for ax, what in zip(axes, ("PSNR (dB, capped at 40)", "SSIM"), strict=True):
        ax.axvspan(-0.5, prefix - 0.5, color="0.9")
        ax.set(xlabel=f"frame (first {prefix} given, shaded)", ylabel=what)
    axes[0].legend(fontsize=7)
    fig.suptitle("frame prediction against the true continuation (held-out clips)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prior", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out", default="docs/video")
    p.add_argument("--per-class", type=int, default=4, help="samples per digit")
    p.add_argument("--heldout", type=int, default=64, help="held-out clips for the distances and frame prediction")
    p.add_argument("--predict", type=int, default=16, help="held-out clips to predict")
    p.add_argument("--prefix-frames", type=int, default=3)
    p.add_argument("--cfg-scale", type=float, default=3.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    torch.manual_seed(a.seed)
    prior, cfg, meta = load_prior(a.prior)
    tok, _ = load_model(a.tokenizer)
    res, frames = tok.config.resolution, clip_frames(tok, cfg.model.token_frames)
    names = meta.get("class_names", [])

    heldout = torch.stack([MovingDigits(a.heldout, res, frames, num_digits=1, seed=VAL_SEED)[i]["image"] for i in range(a.heldout)])
    other = MovingDigits(a.heldout, res, frames, num_digits=1, seed=VAL_SEED + 1)
    other_real = torch.stack([other[i]["image"] for i in range(a.heldout)])
    other_labels = np.array([int(other[i]["label"]) for i in range(a.heldout)])
    recon = decode_tokens(tok, encode_clips(tok, other_real))
    timings["load_and_reference_clips"] = time.perf_counter() - t0

    # Class-conditional samples: per_class clips of every digit, with and without guidance.
    results: dict = {"prior": str(a.prior), "tokenizer": str(a.tokenizer), "frames": frames, "resolution": res}
    labels = torch.arange(10).repeat_interleave(a.per_class)
    generated = {}
    for scale in sorted({1.0, a.cfg_scale}):
        t = time.perf_counter()
        tag = f"cfg{scale:g}"
        r = generate_clips(prior, tok, out / f"samples_{cfg.model.kind}_{tag}", labels, len(labels), names,
                           cfg_scale=scale, temperature=a.temperature, steps=12, seed=a.seed, ncol=a.per_class)
        from safetensors.torch import load_file

        generated[tag] = load_file(str(out / f"samples_{cfg.model.kind}_{tag}" / "clips.safetensors"))["clips"]
        timings[f"sample_{tag}"] = time.perf_counter() - t
        results[f"samples_{tag}"] = {"sample_seconds": r["sample_seconds"], "clips": len(labels),
                                     "motion_per_transition": r["motion_per_transition"]}

    t = time.perf_counter()
    reader = digit_reader(res, frames)
    results["digit_reader_accuracy"] = {
        "real_heldout": float((read_digits(reader, other_real) == other_labels).mean()),
        "tokenizer_reconstructions": float((read_digits(reader, recon) == other_labels).mean()),
    }
    for tag, clips in generated.items():
        results["digit_reader_accuracy"][f"generated_{tag}"] = float((read_digits(reader, clips) == labels.numpy()).mean())
    timings["digit_reader"] = time.perf_counter() - t

    t = time.perf_counter()
    n = min(len(labels), a.heldout)
    dist = {"real_vs_heldout (floor)": clip_set_distances(other_real[:n], heldout[:n]),
            "tokenizer_reconstructions_vs_heldout": clip_set_distances(recon[:n], heldout[:n])}
    for tag, clips in generated.items():
        dist[f"generated_{tag}_vs_heldout"] = clip_set_distances(clips[:n], heldout[:n])
    results["set_distances"] = {k: {m: round(v, 4) for m, v in d.items()} for k, d in dist.items()}
    results["motion_per_transition"] = {
        "real": [round(float(v), 4) for v in motion_profile(heldout)],
        **{f"generated_{k}": [round(float(v), 4) for v in motion_profile(c)] for k, c in generated.items()},
    }
    timings["distances"] = time.perf_counter() - t

    # Frame prediction from held-out clips (given as tensors: GIF files would merge repeated frames): from the
    # given frames alone, and also told the clip's digit (with guidance).
    t = time.perf_counter()
    truth = heldout[: a.predict]
    truth_labels = torch.tensor([int(MovingDigits(a.heldout, res, frames, num_digits=1, seed=VAL_SEED)[i]["label"]) for i in range(a.predict)])
    from safetensors.torch import load_file

    predictions, runs = {}, {}
    for tag, lab, scale in (("", None, 1.0), ("_class", truth_labels, a.cfg_scale)):
        pred_dir = out / f"prediction_{cfg.model.kind}{tag}"
        runs[tag] = generate_clips(prior, tok, pred_dir, lab, a.predict, names, prefix_frames=a.prefix_frames,
                                   inputs=truth, cfg_scale=scale, temperature=a.temperature, steps=12, seed=a.seed)
        predictions[tag] = load_file(str(pred_dir / "clips.safetensors"))["clips"]
    copy = truth.clone()
    copy[:, :, a.prefix_frames :] = truth[:, :, a.prefix_frames - 1 : a.prefix_frames]
    curves = {
        "prior, given frames only": frame_prediction_scores(predictions[""], truth, a.prefix_frames),
        f"prior, + class (cfg {a.cfg_scale:g})": frame_prediction_scores(predictions["_class"], truth, a.prefix_frames),
        "copy last given frame": frame_prediction_scores(copy, truth, a.prefix_frames),
        "tokenizer reconstruction": frame_prediction_scores(decode_tokens(tok, encode_clips(tok, truth)), truth, a.prefix_frames),
    }
    results["frame_prediction"] = {
        "prefix_frames": a.prefix_frames, "clips": a.predict,
        "sample_seconds": {k or "unconditional": r["sample_seconds"] for k, r in runs.items()},
        "flicker_per_transition": {k or "unconditional": r["flicker_per_transition"] for k, r in runs.items()},
        "digit_reader_accuracy": {k or "unconditional": float((read_digits(reader, p) == truth_labels.numpy()).mean())
                                  for k, p in predictions.items()},
        **curves,
    }
    predicted = predictions["_class"]
    prediction_figure(curves, a.prefix_frames, out / f"prediction_{cfg.model.kind}_psnr_ssim.png")
    temporal_consistency_figure(truth[0], predicted[0], out / f"prediction_{cfg.model.kind}_temporal.png",
                                f"frame prediction, first {a.prefix_frames} frames given")
    timings["frame_prediction"] = time.perf_counter() - t
    results["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    (out / f"results_{cfg.model.kind}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
