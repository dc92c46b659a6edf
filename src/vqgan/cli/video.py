"""Video commands: ``reconstruct-video`` (``vqgan reconstruct`` also accepts a video file and calls the same code)."""

from __future__ import annotations

import json
import logging

from vqgan.cli import command, report_skipped, resolve_device

log = logging.getLogger("vqgan.cli")


@command("reconstruct-video", "Reconstruct a video file (or every video under a folder): MP4/GIF side by side, frames, temporal figure.")
class ReconstructVideo:
    @staticmethod
    def build(p, argv):
        p.add_argument("--ckpt", type=str, required=True, help="training checkpoint (.ckpt) or pretrained folder")
        p.add_argument("--input", type=str, required=True, help="a video file or a folder of videos")
        p.add_argument("--output", type=str, required=True, help="output folder")
        p.add_argument("--resolution", type=int, default=None, help="resize+centre-crop side (default: the model's)")
        p.add_argument("--max-frames", type=int, default=33, help="frames to reconstruct from the start of each video")
        p.add_argument("--frame-stride", type=int, default=1, help="keep every N-th frame")
        p.add_argument("--formats", type=list[str], default=["mp4", "gif"], help="video formats to write (mp4, gif, avi)")
        p.add_argument("--device", type=str, default="auto", help="cpu, cuda, or auto")

    @staticmethod
    def run(a):
        from pathlib import Path

        from vqgan.data.video import VideoDecodeError, list_videos
        from vqgan.models.io import load_model
        from vqgan.viz.video import reconstruct_video_file

        model, _ = load_model(a.ckpt)
        device = resolve_device(a.device)
        src = Path(a.input)
        files = [src] if src.is_file() else [r.path for r in list_videos(src)]
        skipped = 0
        for f in files:
            try:
                r = reconstruct_video_file(
                    model, f, a.output, a.resolution, a.max_frames, a.frame_stride, device, tuple(a.formats)
                )
            except VideoDecodeError as e:
                if src.is_file():  # the one file asked for: a one-line error
                    raise ValueError(f"cannot read video {e}") from None
                # A broken video in a folder is skipped and counted, as training does; the others are written.
                skipped += 1
                log.warning("skipping unreadable video %s", e)
                continue
            print(json.dumps({k: r[k] for k in ("file", "frames", "psnr", "flicker", "files")}))
        return report_skipped("reconstruct-video", skipped, len(files))

