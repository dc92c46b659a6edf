"""Vector quantization with a learned codebook (van den Oord et al. 2017, "Neural Discrete Representation
Learning", https://arxiv.org/abs/1711.00937), in its two flavours:

* ``ema=False``: the codebook is learned by gradients of ``||e - sg[z]||^2``;
* ``ema=True``: the codebook is the exponential moving average of the encoder outputs assigned to each code
  (appendix A.1 of the paper), which is more stable and needs no codebook loss.

Both put the commitment weight ``beta`` on the encoder term ``||sg[e] - z||^2`` (eq. 3 of the paper). taming's
``VectorQuantizer2(legacy=True)`` puts it on the codebook term instead, and diffusers keeps that as its default;
we don't (``tests/test_quantizers.py`` pins it).

Codebook health options: k-means initialisation from the first batch, restarts of dead codes from recent
encoder outputs (Dhariwal et al. 2020, "Jukebox"), l2-normalised codes and factorized low-dimensional lookup
(Yu et al. 2021, "Vector-quantized Image Modeling with Improved VQGAN"), and an entropy penalty. Under DDP every
statistic is summed over ranks and every random choice is broadcast from rank 0, so the codebooks stay identical.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqgan.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    all_reduce_sum,
    broadcast,
    flatten_latents,
    perplexity_and_usage,
    unflatten_latents,
)


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, chunk_size: int = 8192) -> torch.Tensor:
    """Index of the nearest code (squared Euclidean) for every row of ``z``.

    ``||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2``; the first term does not change the argmin and is dropped. The
    codebook is scanned in chunks of ``chunk_size`` codes with a running minimum, so a 262,144-code codebook never
    materialises an ``N x K`` matrix.
    """
    e_sq = codebook.pow(2).sum(1)
    if codebook.shape[0] <= chunk_size:
        return torch.addmm(e_sq, z, codebook.t(), alpha=-2.0).argmin(1)
    best_d = torch.full((z.shape[0],), float("inf"), device=z.device, dtype=z.dtype)
    best_i = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
    for start in range(0, codebook.shape[0], chunk_size):
        chunk = codebook[start : start + chunk_size]
        d = torch.addmm(e_sq[start : start + chunk_size], z, chunk.t(), alpha=-2.0)
        d_min, i_min = d.min(1)
        better = d_min < best_d
        best_d = torch.where(better, d_min, best_d)
        best_i = torch.where(better, i_min + start, best_i)
    return best_i


def kmeans(samples: torch.Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's k-means on ``samples`` (N, D); returns ``k`` centroids. Empty clusters keep their previous centre.

    When there are fewer samples than centroids, centroids are drawn with replacement and jittered.
    """
    n = samples.shape[0]
    if n >= k:
        idx = torch.randperm(n, device=samples.device, generator=generator)[:k]
        centroids = samples[idx].clone()
    else:
        idx = torch.randint(n, (k,), device=samples.device, generator=generator)
        noise = torch.randn(k, samples.shape[1], device=samples.device, generator=generator)
        centroids = samples[idx] + 0.01 * samples.std() * noise
    for _ in range(iters):
        assign = nearest_code(samples, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, samples)
        counts = torch.bincount(assign, minlength=k).to(samples.dtype)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)
    return centroids


class VectorQuantizer(Quantizer):
    """Nearest-neighbour vector quantizer with a ``codebook_size x codebook_dim`` codebook.

    Args:
        dim: channels of the encoder output (``embed_dim``).
        codebook_size: number of codes.
        codebook_dim: lookup dimension; when smaller than ``dim``, latents are projected down by a linear map
            before the lookup and back up after it (factorized codes).
        beta: commitment weight (on the encoder term).
        ema: learn the codebook by exponential moving averages instead of gradients.
        decay: EMA decay.
        l2_normalize: look up on the unit sphere (cosine similarity).
        kmeans_init: initialise from k-means on the first training batch.
        dead_code_threshold: restart codes whose running usage (hits per step, EMA with ``usage_decay``) is below
            this; 0 disables restarts.
        entropy_weight: weight of ``H(per-sample assignment) - H(average assignment)`` on soft assignments.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: int | None = None,
        beta: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        eps: float = 1e-5,
        l2_normalize: bool = False,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.0,
        usage_decay: float = 0.99,
        entropy_weight: float = 0.0,
        entropy_temperature: float = 0.01,
        search_chunk_size: int = 8192,
    ):
        super().__init__(dim, codebook_size, usage_decay)
        self.codebook_dim = codebook_dim or dim
        self.beta, self.ema, self.decay, self.eps = beta, ema, decay, eps
        self.l2_normalize = l2_normalize
        self.kmeans_iters = kmeans_iters
        self.dead_code_threshold = dead_code_threshold
        self.entropy_weight, self.entropy_temperature = entropy_weight, entropy_temperature
        self.search_chunk_size = search_chunk_size
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
        # 0 until k-means initialisation has run (a buffer, so it is saved and restored with checkpoints).
        self.register_buffer("initialized", torch.tensor(not kmeans_init))

    # -- lookup ---------------------------------------------------------------------------------------------
    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.l2_normalize else x

    @property
    def lookup_codebook(self) -> torch.Tensor:
        """Codes in the lookup space (normalised when ``l2_normalize``)."""
        return self._normalize(self.embedding.weight)

    @property
    def codebook(self) -> torch.Tensor:
        return self.project_out(self.lookup_codebook)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        codes = self.project_out(F.embedding(indices, self.lookup_codebook))
        return codes.movedim(-1, 1)

    # -- training-time codebook maintenance -----------------------------------------------------------------
    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        centroids = kmeans(flat.detach().float(), self.codebook_size, self.kmeans_iters)
        broadcast(centroids)
        self.embedding.weight.data.copy_(centroids)
        if self.ema:
            self.ema_cluster_size.fill_(1.0)
            self.ema_embed_sum.copy_(centroids)
        # Every code starts "alive" with a grace period before it can be restarted.
        self.usage_ema.fill_(2.0 * self.dead_code_threshold)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, onehot_counts: torch.Tensor, indices: torch.Tensor) -> None:
        embed_sum = torch.zeros_like(self.ema_embed_sum).index_add_(0, indices, flat.float())
        all_reduce_sum(embed_sum)
        self.ema_cluster_size.lerp_(onehot_counts, 1.0 - self.decay)
        self.ema_embed_sum.lerp_(embed_sum, 1.0 - self.decay)
        # Laplace smoothing of the cluster sizes so that empty clusters don't divide by zero.
        n = self.ema_cluster_size.sum()
        size = (self.ema_cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embedding.weight.data.copy_(self.ema_embed_sum / size[:, None])

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """Replace dead codes by random encoder outputs of this batch; returns the number restarted (a tensor).

        Runs without host synchronisation: the replacement is a ``torch.where`` over the whole codebook.
        """
        dead = self.dead_codes(self.dead_code_threshold)
        picks = torch.randint(flat.shape[0], (self.codebook_size,), device=flat.device)
        samples = flat[picks].detach().float()
        broadcast(samples)
        self.embedding.weight.data.copy_(torch.where(dead[:, None], samples, self.embedding.weight.data))
        if self.ema:
            self.ema_embed_sum.copy_(torch.where(dead[:, None], samples, self.ema_embed_sum))
            self.ema_cluster_size.copy_(torch.where(dead, torch.ones_like(self.ema_cluster_size), self.ema_cluster_size))
        grace = torch.full_like(self.usage_ema, 2.0 * self.dead_code_threshold)
        self.usage_ema.copy_(torch.where(dead, grace, self.usage_ema))
        return dead.sum()

    # -- forward --------------------------------------------------------------------------------------------
    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        flat, shape = flatten_latents(z)
        flat = self._normalize(self.project_in(flat))
        if self.training and not bool(self.initialized):
            self._kmeans_init(flat)
        codebook = self.lookup_codebook
        with torch.no_grad():
            indices = nearest_code(flat.detach(), codebook.detach().to(flat.dtype), self.search_chunk_size)
        q = F.embedding(indices, codebook)

        losses: dict[str, torch.Tensor] = {}
        commitment = F.mse_loss(flat, q.detach())
        losses["commitment"] = commitment.detach()
        loss = self.beta * commitment
        if not self.ema:
            codebook_loss = F.mse_loss(q, flat.detach())
            losses["codebook"] = codebook_loss.detach()
            loss = loss + codebook_loss
        if self.entropy_weight > 0:
            entropy = self._entropy_penalty(flat, codebook)
            losses["entropy"] = entropy.detach()
            loss = loss + self.entropy_weight * entropy

        counts = torch.bincount(indices, minlength=self.codebook_size).float()
        stats = perplexity_and_usage(counts)
        if self.training:
            with torch.no_grad():
                all_reduce_sum(counts)
                if self.ema:
                    self._ema_update(flat.detach(), counts, indices)
                self._track_usage(counts)
                if self.dead_code_threshold > 0:
                    stats["restarted"] = self._restart_dead_codes(flat).float()

        # Straight-through estimator: forward uses q, backward copies the gradient to the encoder output.
        # Written as q + (z - sg[z]) rather than z + sg[q - z] so that the forward value is exactly q.
        q_st = q.detach() + (flat - flat.detach())
        quantized = unflatten_latents(self.project_out(q_st), shape)
        return QuantizerOutput(quantized, indices.reshape(shape), loss, losses, stats)

    def _entropy_penalty(self, flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """``H(p(code | z))`` averaged over samples minus ``H(mean p(code | z))``: confident yet diverse."""
        logits = -torch.cdist(flat, codebook).pow(2) / self.entropy_temperature
        probs = logits.softmax(-1)
        sample_entropy = -(probs * logits.log_softmax(-1)).sum(-1).mean()
        avg = probs.mean(0)
        avg_entropy = -(avg * torch.log(avg.clamp_min(1e-12))).sum()
        return sample_entropy - avg_entropy
