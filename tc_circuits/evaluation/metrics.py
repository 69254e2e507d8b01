"""Plain tensor metrics for transcoders and spliced models (no model, no hooks).

* :func:`fvu` -- fraction of variance unexplained, ``sum |y - y_hat|^2 / sum |y - mean(y)|^2``
  (the variance is taken about the per-dimension mean over all tokens, summed over dims).
* :func:`l0` -- mean number of non-zero latents per token.
* :func:`next_token_ce` -- mean next-token cross-entropy (positions ``0..seq-2`` predict
  tokens ``1..seq-1``).
* :func:`kl_per_token` -- ``KL(p_original || p_spliced)`` per position.
* :func:`ce_recovered` -- ``(CE_ablate - CE_spliced) / (CE_ablate - CE_orig)``.
* :func:`density_histogram` -- histogram of ``log10`` latent firing frequencies.

Running sums (:class:`VarianceAccumulator`, fire counts) let the model-level code in
:mod:`tc_circuits.evaluation.evaluate` stream over many batches in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor


def fvu(pred: Float[Tensor, "... d"], target: Float[Tensor, "... d"]) -> float:
    """Fraction of variance unexplained of ``pred`` as a reconstruction of ``target``.

    All leading dims are flattened into tokens; the variance is about the per-dimension mean
    and summed over dimensions.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    acc = VarianceAccumulator(target.shape[-1])
    acc.update(pred, target)
    return acc.fvu


def explained_variance(pred: Float[Tensor, "... d"], target: Float[Tensor, "... d"]) -> float:
    """``1 - fvu(pred, target)``."""
    return 1.0 - fvu(pred, target)


def l0(latents: Float[Tensor, "... n_latents"]) -> float:
    """Mean number of non-zero latents per token."""
    if latents.numel() == 0:
        raise ValueError("l0 of an empty tensor")
    return float((latents != 0).sum(-1).double().mean())


class VarianceAccumulator:
    """Streams ``sum |y - y_hat|^2`` and the variance of ``y`` about its mean, in float64."""

    def __init__(self, d: int):
        self.n = 0
        self.sse = 0.0
        self.sum_y = torch.zeros(d, dtype=torch.float64)
        self.sum_y2 = torch.zeros(d, dtype=torch.float64)

    def update(self, pred: Float[Tensor, "... d"], target: Float[Tensor, "... d"]) -> None:
        y = target.detach().reshape(-1, target.shape[-1]).double().cpu()
        y_hat = pred.detach().reshape(-1, pred.shape[-1]).double().cpu()
        self.n += y.shape[0]
        self.sse += float(((y - y_hat) ** 2).sum())
        self.sum_y += y.sum(0)
        self.sum_y2 += (y**2).sum(0)

    @property
    def total_variance(self) -> float:
        """``sum_d sum_t (y_td - mean_d)^2``."""
        if self.n == 0:
            raise ValueError("no tokens accumulated")
        return float((self.sum_y2 - self.sum_y**2 / self.n).sum())

    @property
    def mse(self) -> float:
        """Mean over tokens of the squared error summed over dims."""
        return self.sse / self.n

    @property
    def fvu(self) -> float:
        var = self.total_variance
        if var <= 0:
            raise ValueError("target has zero variance: FVU is undefined")
        return self.sse / var


def next_token_ce(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos_minus_1"]:
    """Per-position next-token cross-entropy (natural log), ``[batch, pos - 1]``."""
    if tokens.shape[1] < 2:
        raise ValueError("next-token CE needs sequences of at least 2 tokens")
    logp = F.log_softmax(logits[:, :-1].double(), dim=-1)
    return -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)


def kl_per_token(
    logits_p: Float[Tensor, "batch pos d_vocab"], logits_q: Float[Tensor, "batch pos d_vocab"]
) -> Float[Tensor, "batch pos"]:
    """``KL(p || q) = sum_v p_v (log p_v - log q_v)`` per position, from logits."""
    logp = F.log_softmax(logits_p.double(), dim=-1)
    logq = F.log_softmax(logits_q.double(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def ce_recovered(ce_orig: float, ce_spliced: float, ce_ablate: float) -> float:
    """``(CE_ablate - CE_spliced) / (CE_ablate - CE_orig)``: 1 = as good as the MLP, 0 = as bad
    as ablating it. NaN when ablation does not change the loss."""
    denom = ce_ablate - ce_orig
    if denom == 0:
        return math.nan
    return (ce_ablate - ce_spliced) / denom


@dataclass(frozen=True)
class DensityHistogram:
    """Histogram of ``log10`` firing frequencies of the latents that fired at least once."""

    bin_edges: list[float]
    """``bins + 1`` edges in ``log10(frequency)``, from ``log10(1 / n_tokens)`` to 0."""
    counts: list[int]
    """Number of live latents per bin."""
    n_dead: int
    """Latents that never fired (not in the histogram)."""
    frequencies: list[float]
    """Firing frequency of every latent (0 for dead ones)."""

    def to_dict(self) -> dict:
        return {
            "bin_edges": self.bin_edges,
            "counts": self.counts,
            "n_dead": self.n_dead,
            "frequencies": self.frequencies,
        }


def density_histogram(
    fire_counts: Int[Tensor, " n_latents"], n_tokens: int, bins: int = 20
) -> DensityHistogram:
    """Histogram data of ``log10(fire_count / n_tokens)`` over the live latents."""
    if n_tokens <= 0:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    if bins <= 0:
        raise ValueError(f"bins must be positive, got {bins}")
    freq = fire_counts.double().cpu() / n_tokens
    alive = freq > 0
    lo = math.log10(1.0 / n_tokens)
    hi = 0.0
    if lo == hi:
        lo = -1.0
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    counts = torch.histc(freq[alive].log10(), bins=bins, min=lo, max=hi) if alive.any() else (
        torch.zeros(bins, dtype=torch.float64)
    )
    return DensityHistogram(
        bin_edges=[float(e) for e in edges],
        counts=[int(round(float(c))) for c in counts],
        n_dead=int((~alive).sum()),
        frequencies=[float(f) for f in freq],
    )
