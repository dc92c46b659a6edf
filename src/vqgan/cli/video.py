"""Video commands: ``reconstruct-video`` (``vqgan reconstruct`` also accepts a video file and calls the same code)."""

from __future__ import annotations

import json
import logging

from vqgan.cli import command, report_skipped

log = logging.getLogger("vqgan.cli")


@command("reconstruct-video")
def reconstruct_video(
    ckpt: str, input: str, output: str, resolution: int | None = None, max_frames: int = 33,
    frame_stride: int = 1, formats: list[str] | None = None, device: str = "auto",
) -> int:
    """Reconstruct a video file (or every video under a folder): MP4/GIF side by side, frames, temporal figure.

    Args:
        input: a video file or a folder of videos.
        resolution: resize and centre-crop side (default: the model's).
        max_frames: frames to reconstruct from the start of each video.
        frame_stride: keep every N-th frame.
        formats: video formats to write: mp4, gif, avi (default: mp4 and gif).
    """
    from pathlib import Path

    from vqgan.data.video import VideoDecodeError, list_videos
    from vqgan.models.io import load_model
    from vqgan.viz.video import reconstruct_video_file

    model, _ = load_model(ckpt)
    src = Path(input)
    files = [src] if src.is_file() else [r.path for r in list_videos(src)]
    skipped = 0
    for f in files:
        try:
            r = reconstruct_video_file(model, f, output, resolution, max_frames, frame_stride, device,
                                       tuple(formats or ("mp4", "gif")))
        except VideoDecodeError as e:
            if src.is_file():  # the one file asked for: a one-line error
                raise ValueError(f"cannot read video {e}") from None
            # A broken video in a folder is skipped and counted, as training does; the others are written.
            skipped += 1
            log.warning("skipping unreadable video %s", e)
            continue
        print(json.dumps({k: r[k] for k in ("file", "frames", "psnr", "flicker", "files")}))
    return report_skipped("reconstruct-video", skipped, len(files))
