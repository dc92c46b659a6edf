"""Vector quantization with a learned codebook (van den Oord et al. 2017, https://arxiv.org/abs/1711.00937),
learned by gradients (``ema=False``) or as the moving average of the encoder outputs assigned to each code
(``ema=True``, appendix A.1). Codebook health: k-means initialisation, dead-code restarts (Dhariwal et al.
2020, "Jukebox", https://arxiv.org/abs/2005.00341), l2-normalised and factorized codes (Yu et al. 2021,
ViT-VQGAN, https://arxiv.org/abs/2110.04627), an entropy penalty. Under DDP statistics are summed over ranks
and random choices broadcast from rank 0. The training step never reads a tensor back to the host.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqgan.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    all_gather_rows,
    all_reduce_sum,
    broadcast,
    code_histogram,
    flatten_latents,
    straight_through,
    unflatten_latents,
)


def nearest_code(
    z: torch.Tensor, codebook: torch.Tensor, chunk_size: int = 8192, row_block: int | None = None
) -> torch.Tensor:
    """Index of the nearest code (squared Euclidean) for every row of ``z``; ties go to the lowest index.

    The codebook is scanned in chunks of ``chunk_size`` codes with a running minimum, so 262,144 codes never
    materialise an ``N x K`` matrix. On CPU the rows go in blocks whose distance matrix (about 512 KB) stays
    in cache (1.5x faster). Distances are fp32 even under autocast: bf16 cannot tell nearby codes apart.
    """
    device = z.device.type
    autocast_on = device in ("cuda", "cpu", "xpu", "mps") and torch.is_autocast_enabled(device)
    with torch.autocast(device, enabled=False) if autocast_on else nullcontext():
        z, codebook = z.float(), codebook.float()
        n, k = z.shape[0], codebook.shape[0]
        e_sq = codebook.pow(2).sum(1)
        if row_block is None:
            # Row blocks only where they pay: on CPU, when the whole codebook fits in one chunk.
            row_block = max(1, n if device != "cpu" or k > chunk_size else 2**17 // k)
        out = torch.empty(n, dtype=torch.long, device=z.device)
        for row in range(0, n, row_block):
            rows = z[row : row + row_block]
            for start in range(0, k, chunk_size):
                chunk = codebook[start : start + chunk_size]
                d = torch.addmm(e_sq[start : start + chunk_size], rows, chunk.t(), alpha=-2.0)
                d_min, i_min = d.min(1)
                if start == 0:
                    best_d, best_i = d_min, i_min
                else:
                    better = d_min < best_d  # strict: on ties the lower index wins
                    best_d = torch.where(better, d_min, best_d)
                    best_i = torch.where(better, i_min + start, best_i)
            out[row : row + row_block] = best_i
        return out


def kmeans(
    samples: torch.Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None,
    plus_plus_max_codes: int = 4096,
) -> torch.Tensor:
    """Lloyd's k-means on ``samples`` (N, D); returns ``k`` centroids. Empty clusters keep their centre.

    Seeds with k-means++ (Arthur & Vassilvitskii 2007) up to ``plus_plus_max_codes`` centroids, a random
    subset above; with fewer samples than centroids, centroids are drawn with replacement and jittered. The
    k-means++ picks stay on the device (``index_select``, never ``samples[i]``): no synchronisation on a GPU.
    """
    n = samples.shape[0]
    if k <= min(n, plus_plus_max_codes):
        picks = [torch.randint(n, (1,), device=samples.device, generator=generator)]
        d2 = (samples - samples.index_select(0, picks[0])).pow(2).sum(1)
        for _ in range(1, k):
            # A tiny floor keeps the distribution valid once every sample coincides with a centre.
            picks.append(torch.multinomial(d2 + 1e-12, 1, generator=generator))
            d2 = torch.minimum(d2, (samples - samples.index_select(0, picks[-1])).pow(2).sum(1))
        centroids = samples[torch.cat(picks)]
    elif n >= k:
        centroids = samples[torch.randperm(n, device=samples.device, generator=generator)[:k]]
    else:
        idx = torch.randint(n, (k,), device=samples.device, generator=generator)
        noise = torch.randn(k, samples.shape[1], device=samples.device, generator=generator)
        centroids = samples[idx] + 0.01 * samples.std() * noise
    for _ in range(iters):
        assign = nearest_code(samples, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, samples)
        counts = code_histogram(assign, k).to(samples.dtype)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)
    return centroids


def check_beta_on(beta_on: str, ema: bool = False) -> None:
    """Refuse an unknown ``beta_on``, or ``codebook`` for an EMA codebook (which has no codebook loss)."""
    if beta_on not in ("commitment", "codebook"):
        raise ValueError(f"beta_on={beta_on!r} must be 'commitment' or 'codebook'")
    if beta_on == "codebook" and ema:
        raise ValueError(
            "beta_on='codebook' needs a codebook learned by gradients (ema=False): the EMA codebook has no "
            "codebook loss term for beta to weight"
        )


def lookup(
    flat: torch.Tensor, codebook: torch.Tensor, beta: float, beta_on: str, chunk_size: int,
    codebook_term: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Nearest codes ``q`` of the ``(N, d)`` rows ``flat``, their indices, the weighted loss and its terms:
    ``codebook + beta * commitment`` (VQ-VAE eq. 3), ``commitment + beta * codebook`` with
    ``beta_on="codebook"`` (taming's ``legacy=True``, seed 003), ``beta * commitment`` without
    ``codebook_term`` (EMA codebooks)."""
    with torch.no_grad():
        indices = nearest_code(flat.detach(), codebook.detach().to(flat.dtype), chunk_size)
    q = F.embedding(indices, codebook)
    commitment = F.mse_loss(flat, q.detach())
    losses = {"commitment": commitment.detach()}
    if not codebook_term:
        return q, indices, beta * commitment, losses
    codebook_loss = F.mse_loss(q, flat.detach())
    losses["codebook"] = codebook_loss.detach()
    loss = commitment + beta * codebook_loss if beta_on == "codebook" else codebook_loss + beta * commitment
    return q, indices, loss, losses


class VectorQuantizer(Quantizer):
    """Nearest-neighbour vector quantizer with a ``codebook_size x codebook_dim`` codebook for latents of
    ``dim`` channels. The other arguments are the :class:`~vqgan.config.QuantizerConfig` fields of the same
    names; ``ema`` learns the codebook by moving averages, ``eps`` smooths the EMA cluster sizes."""

    def __init__(
        self, dim: int, codebook_size: int, codebook_dim: int | None = None, beta: float = 0.25,
        ema: bool = True, beta_on: str = "commitment", decay: float = 0.99, eps: float = 1e-5,
        l2_normalize: bool = False, kmeans_init: bool = True, kmeans_iters: int = 10,
        dead_code_threshold: float = 0.0, usage_decay: float = 0.99, entropy_weight: float = 0.0,
        entropy_temperature: float = 0.01, search_chunk_size: int = 8192,
    ):
        super().__init__(dim, codebook_size, usage_decay, dead_code_threshold)
        check_beta_on(beta_on, ema)
        self.codebook_dim = codebook_dim or dim
        self.beta, self.beta_on, self.ema, self.decay, self.eps = beta, beta_on, ema, decay, eps
        self.l2_normalize, self.kmeans_iters = l2_normalize, kmeans_iters
        self.search_chunk_size = search_chunk_size
        self.entropy_weight, self.entropy_temperature = entropy_weight, entropy_temperature
        self.learns_codebook_by_gradient = not ema
        factorized = self.codebook_dim != dim
        self.project_in = nn.Linear(dim, self.codebook_dim) if factorized else nn.Identity()
        self.project_out = nn.Linear(self.codebook_dim, dim) if factorized else nn.Identity()

        # Uniform init in [-1/K, 1/K] as in the VQ-VAE reference code (taming does the same).
        self.embedding = nn.Embedding(codebook_size, self.codebook_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        if ema:
            self.embedding.weight.requires_grad_(False)
            self.register_buffer("ema_cluster_size", torch.zeros(codebook_size))
            self.register_buffer("ema_embed_sum", self.embedding.weight.detach().clone())
        # False until k-means initialisation has run (a buffer, so it is saved and restored with checkpoints),
        # mirrored by a Python flag so that forward() never synchronises with the device to read it.
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self._kmeans_pending = kmeans_init
        self.register_load_state_dict_post_hook(_refresh_init_flag)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.l2_normalize else x

    @property
    def lookup_codebook(self) -> torch.Tensor:
        """Codes in the lookup space (normalised when ``l2_normalize``)."""
        return self._normalize(self.embedding.weight)

    @property
    def codebook(self) -> torch.Tensor:
        return self.project_out(self.lookup_codebook)

    def codebook_grad(self) -> torch.Tensor | None:
        return None if self.ema else self.embedding.weight.grad

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        # Flattened as in forward(), so the projection sees the same (N, d) matrix: bit-identical results.
        flat = F.embedding(indices.reshape(-1), self.lookup_codebook)
        return unflatten_latents(self.project_out(flat), tuple(indices.shape))

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        samples = all_gather_rows(flat.detach().float())
        centroids = self._normalize(kmeans(samples, self.codebook_size, self.kmeans_iters))
        broadcast(centroids)  # k-means draws random starts; rank 0's result wins
        self.embedding.weight.data.copy_(centroids)
        if self.ema:
            self.ema_cluster_size.fill_(1.0)
            self.ema_embed_sum.copy_(centroids)
        # Every code starts "alive" with a grace period before it can be restarted (about 70 steps with the
        # default usage_decay), or with a uniform share when restarts are off.
        self.usage_ema.fill_(2.0 * self.dead_code_threshold if self.dead_code_threshold > 0 else 1.0)
        self.initialized.fill_(True)
        self._kmeans_pending = False

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, counts: torch.Tensor, indices: torch.Tensor) -> None:
        """One EMA step (appendix A.1) from this step's ``counts`` (summed over ranks)."""
        embed_sum = torch.zeros_like(self.ema_embed_sum).index_add_(0, indices, flat.float())
        all_reduce_sum(embed_sum)
        self.ema_cluster_size.lerp_(counts, 1.0 - self.decay)
        self.ema_embed_sum.lerp_(embed_sum, 1.0 - self.decay)
        # Laplace smoothing of the cluster sizes so that empty clusters don't divide by zero.
        n = self.ema_cluster_size.sum()
        size = (self.ema_cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embedding.weight.data.copy_(self.ema_embed_sum / size[:, None])

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """Replace dead codes by random encoder outputs of this batch (rank 0's under DDP; the dead mask
        agrees on every rank); returns the number restarted. No host sync: one ``torch.where``."""
        dead = self.dead_codes(self.dead_code_threshold)
        picks = torch.randint(flat.shape[0], (self.codebook_size,), device=flat.device)
        samples = broadcast(flat[picks].detach().float().contiguous())
        weight = self.embedding.weight.data
        weight.copy_(torch.where(dead[:, None], samples.to(weight.dtype), weight))
        if self.ema:
            self.ema_embed_sum.copy_(torch.where(dead[:, None], samples, self.ema_embed_sum))
            self.ema_cluster_size.masked_fill_(dead, 1.0)
        self.usage_ema.masked_fill_(dead, 2.0 * self.dead_code_threshold)
        return dead.sum()

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        flat, shape = flatten_latents(z)
        flat = self._normalize(self.project_in(flat))
        restarted = None
        if self.training:
            if self._kmeans_pending:
                self._kmeans_init(flat)
            if self.dead_code_threshold > 0:
                # Before the lookup, so that a restarted code can be chosen (and its gradient is correct).
                restarted = self._restart_dead_codes(flat)
        codebook = self.lookup_codebook
        q, indices, loss, losses = lookup(
            flat, codebook, self.beta, self.beta_on, self.search_chunk_size, codebook_term=not self.ema
        )
        if self.entropy_weight > 0:
            entropy = self._entropy_penalty(flat, codebook)
            losses["entropy"] = entropy.detach()
            loss = loss + self.entropy_weight * entropy
        counts, stats = self._count_codes(indices, restarted)
        if self.training and self.ema:
            self._ema_update(flat.detach(), counts, indices)
        if restarted is not None:
            stats["restarted"] = restarted.float()
        quantized = unflatten_latents(self.project_out(straight_through(flat, q)), shape)
        return QuantizerOutput(quantized, indices.reshape(shape), loss, losses, stats)

    def _entropy_penalty(self, flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """``H(p(code | z))`` averaged over samples minus ``H(mean p(code | z))``: confident yet diverse
        assignments (MAGVIT-v2's LFQ entropy terms on a learned codebook). Materialises ``N x K``."""
        log_probs = (-torch.cdist(flat, codebook).pow(2) / self.entropy_temperature).log_softmax(-1)
        probs = log_probs.exp()
        avg = probs.mean(0)
        return -(probs * log_probs).sum(-1).mean() + (avg * torch.log(avg.clamp_min(1e-12))).sum()


def _refresh_init_flag(module: Any, incompatible_keys: Any) -> None:
    # One host read when a checkpoint is loaded, instead of one per forward pass.
    module._kmeans_pending = not bool(module.initialized)
