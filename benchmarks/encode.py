"""Tokenization (images -> code indices) and decoding (indices -> images) throughput against diffusers' ``VQModel``
with the same architecture and weights-shape, plus how the time grows with resolution and with codebook size.

* ours: ``VQModel.encode(x).indices`` and ``VQModel.decode_codes(indices)`` under ``torch.inference_mode``, in the
  default memory format and in channels_last (``model.to(memory_format=torch.channels_last)``).
* diffusers: ``VQModel.encode(x).latents`` then ``VQModel.quantize(latents)`` for the indices (what its users do),
  and ``quantize.get_codebook_entry`` + ``decode(..., force_not_quantize=True)``.
* codebook scaling: the nearest-code search alone on fixed latents, our chunked ``nearest_code`` against diffusers'
  ``VectorQuantizer`` (``torch.cdist`` over the whole codebook), 1,024 to 262,144 codes.

    python benchmarks/encode.py [--repeats 7] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import describe_machine, device, interleaved, median, table  # noqa: E402
from train_step import diffusers_model, experiment  # noqa: E402

from vqgan.models import VQModel  # noqa: E402
from vqgan.quantizers.vq import nearest_code  # noqa: E402


def models(resolution: int, ch: int, codebook_size: int, dev: torch.device):
    cfg = experiment(resolution, ch).model
    cfg.quantizer.codebook_size = codebook_size
    torch.manual_seed(0)
    ours = VQModel(cfg).to(dev).eval()
    ours_cl = VQModel(cfg).to(dev).eval()
    ours_cl.load_state_dict(ours.state_dict())
    ours_cl = ours_cl.to(memory_format=torch.channels_last)
    theirs = diffusers_model(cfg).to(dev).eval()
    return cfg, ours, ours_cl, theirs


def diffusers_indices(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = m.encode(x).latents
    _, _, (_, _, idx) = m.quantize(h)
    return idx.reshape(h.shape[0], h.shape[2], h.shape[3])


def diffusers_decode(m: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    b, h, w = idx.shape
    q = m.quantize.get_codebook_entry(idx.reshape(-1), (b, h, w, m.quantize.vq_embed_dim))
    return m.decode(q, force_not_quantize=True).sample


def throughput(resolution: int, batch: int, ch: int, repeats: int, dev: torch.device, decode: bool) -> dict[str, float]:
    """images/s of each variant, medians of interleaved repetitions."""
    cfg, ours, ours_cl, theirs = models(resolution, ch, 1024, dev)
    x = torch.rand(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(0)).to(dev) * 2 - 1
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        idx = ours.encode(x).indices
        fns = {
            "ours encode": lambda: ours.encode(x).indices,
            "ours encode (channels_last)": lambda: ours_cl.encode(x_cl).indices,
            "diffusers encode": lambda: diffusers_indices(theirs, x),
        }
        if decode:
            fns.update({
                "ours decode": lambda: ours.decode_codes(idx),
                "ours decode (channels_last)": lambda: ours_cl.decode_codes(idx),
                "diffusers decode": lambda: diffusers_decode(theirs, idx),
            })
        times = interleaved(fns, dev, repeats=repeats, warmup=1)
    return {k: batch / median(v) for k, v in times.items()}


def codebook_scaling(sizes: list[int], n: int, dim: int, repeats: int, dev: torch.device) -> list[dict[str, object]]:
    from diffusers.models.autoencoders.vae import VectorQuantizer

    rows = []
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, dim, generator=g).to(dev)
    for k in sizes:
        codebook = torch.randn(k, dim, generator=g).to(dev)
        vq = VectorQuantizer(k, dim, beta=0.25, legacy=True).to(dev).eval()
        vq.embedding.weight.data.copy_(codebook)
        z_img = z.reshape(1, n, 1, dim).permute(0, 3, 1, 2).contiguous()  # (1, dim, n, 1)
        with torch.inference_mode():
            ours_i = nearest_code(z, codebook)
            theirs_i = vq(z_img)[2][2].reshape(-1)
            agree = (ours_i == theirs_i).float().mean().item()
            times = interleaved(
                {"ours": lambda c=codebook: nearest_code(z, c), "diffusers": lambda q=vq, zi=z_img: q(zi)},
                dev,
                repeats=repeats,
            )
        t_o, t_d = median(times["ours"]), median(times["diffusers"])
        rows.append({"codes": k, "ours ms": 1000 * t_o, "diffusers ms": 1000 * t_d, "ratio": t_d / t_o,
                     "same indices": f"{100 * agree:.1f}%"})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--ch", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="fewer resolutions and codebook sizes")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = device()
    print(f"encode/decode, {describe_machine(dev)}; ch {args.ch}, ch_mult 1,2,2,4 (f8), 1024 codes of dim {4 * args.ch}")

    # Main comparison: 32x32 (CPU) / 256x256 (GPU) images.
    res, batch = (32, 32) if dev.type == "cpu" else (256, 32)
    main_ips = throughput(res, batch, args.ch, args.repeats, dev, decode=True)
    print(table([{"variant": k, "images/s": v} for k, v in main_ips.items()], f"batch {batch} at {res}x{res}"))

    # Resolution scaling (encode only); the batch shrinks with the image so every point costs about the same.
    resolutions = [32, 64, 128] if args.quick else [32, 64, 128, 256]
    rows = []
    for r in resolutions:
        b = max(1, (batch * 32 * 32) // (r * r)) if dev.type == "cpu" else max(1, batch * 256 * 256 // (r * r))
        ips = throughput(r, b, args.ch, max(3, args.repeats // 2), dev, decode=False)
        rows.append({
            "resolution": r, "batch": b, "ours img/s": ips["ours encode"],
            "ours CL img/s": ips["ours encode (channels_last)"], "diffusers img/s": ips["diffusers encode"],
            "ms/image (ours)": 1000 / ips["ours encode"],
            "ratio (best ours)": max(ips["ours encode"], ips["ours encode (channels_last)"]) / ips["diffusers encode"],
        })
    print(table(rows, "encode time against resolution"))

    sizes = [1024, 16384, 262144] if args.quick else [1024, 4096, 16384, 65536, 262144]
    cb = codebook_scaling(sizes, n=512, dim=4 * args.ch, repeats=max(3, args.repeats // 2), dev=dev)
    print(table(cb, "nearest-code search against codebook size (512 latents)"))

    enc = main_ips["ours encode"] / main_ips["diffusers encode"]
    enc_cl = main_ips["ours encode (channels_last)"] / main_ips["diffusers encode"]
    dec = main_ips["ours decode"] / main_ips["diffusers decode"]
    dec_cl = main_ips["ours decode (channels_last)"] / main_ips["diffusers decode"]
    print(f"RESULT encode_ratio_vs_diffusers={max(enc, enc_cl):.3f} encode_ratio_default_format={enc:.3f} "
          f"decode_ratio_vs_diffusers={max(dec, dec_cl):.3f} codebook_262k_ratio={cb[-1]['ratio']:.3f}")


if __name__ == "__main__":
    main()
