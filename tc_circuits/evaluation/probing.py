"""Sparse probing and feature absorption on known binary variables (SAEBench-style).

**k-sparse probing** (Gurnee et al. 2023; Gao et al. 2024; SAEBench): for a binary variable,
split the tokens into a balanced train and test set (equal positives and negatives, so chance
is 0.5); on the train half pick the ``k`` latents with the largest difference of mean
activation between the classes; fit an L2-regularised logistic regression on those ``k``
latents (standardised); report test accuracy. The same logistic regression on the raw
activation the dictionary reads (``d_in`` dims) is the reference: a dictionary whose few
latents reach it has isolated the variable.

**absorption**, fitted to what the organism's vocabulary allows: a general variable ``G``
(e.g. "a two-digit year token of the 1700s") and the latent that best detects it (by F1, the
*main* latent). On the tokens where ``G`` holds, the main latent is silent on some; a
token is **absorbed** when the main latent is silent there but another latent is active that
is *specific* to a part of ``G``: its precision for ``G`` is at least ``precision_min`` and
its recall of ``G`` at most ``recall_max``, and it is active on at least ``min_active``
tokens (a specific-year latent standing in for "year in the 1700s"). Reported: the main latent's recall, the absorption rate (absorbed / holds) and
the miss rate (silent main latent, nothing specific active). Chanin et al. (2024) measure it
with a probe direction on the first-letter task; here the labels replace the probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from tc_circuits.evaluation.interpretability import DetectionCounts


def fit_logistic(
    x: Float[Tensor, "n d"], y: Bool[Tensor, " n"], *, l2: float = 1e-3, steps: int = 50
) -> tuple[Float[Tensor, " d"], float, Float[Tensor, " d"], Float[Tensor, " d"]]:
    """L2-regularised logistic regression (LBFGS) on standardised ``x``: (w, b, mean, std)."""
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    xs = (x - mean) / std
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    t = y.double()
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + b, t) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), float(b.detach()), mean, std


def probe_accuracy(
    x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, *, l2: float = 1e-3
) -> float:
    """Test accuracy of :func:`fit_logistic` fitted on the train split."""
    w, b, mean, std = fit_logistic(x_train, y_train, l2=l2)
    pred = ((x_test.double() - mean) / std) @ w + b > 0
    return float((pred == y_test).double().mean())


def balanced_split(
    y: Bool[Tensor, " n"], *, max_per_class: int = 1000, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Indices of a balanced train and test split (half of each class each)."""
    g = torch.Generator().manual_seed(seed)
    pos, neg = torch.nonzero(y).flatten(), torch.nonzero(~y).flatten()
    m = min(len(pos), len(neg), max_per_class)
    if m < 4:
        raise ValueError(f"need at least 4 examples of each class, got {len(pos)} positives, {len(neg)} negatives")
    pos = pos[torch.randperm(len(pos), generator=g)[:m]]
    neg = neg[torch.randperm(len(neg), generator=g)[:m]]
    h = m // 2
    return torch.cat([pos[:h], neg[:h]]), torch.cat([pos[h:], neg[h:]])


@dataclass(frozen=True)
class ProbeResult:
    """Test accuracies of k-sparse probes over latents and of a probe on the raw activation."""

    variable: str
    sparse: dict[int, float]
    """k -> test accuracy of the k-sparse latent probe."""
    raw: float | None
    """Test accuracy of the probe on the raw activation (None when not given)."""
    latents: dict[int, list[int]]
    """k -> the latents the probe chose."""


def sparse_probe(
    latents: Float[Tensor, "n n_latents"],
    y: Bool[Tensor, " n"],
    *,
    ks: tuple[int, ...] = (1, 2, 5, 10),
    raw: Float[Tensor, "n d"] | None = None,
    name: str = "",
    max_per_class: int = 1000,
    seed: int = 0,
) -> ProbeResult:
    """k-sparse probes for variable ``y`` (see the module docstring)."""
    if latents.shape[0] != y.shape[0]:
        raise ValueError(f"{latents.shape[0]} activation rows but {y.shape[0]} labels")
    train, test = balanced_split(y, max_per_class=max_per_class, seed=seed)
    ztr, ytr = latents[train], y[train]
    diff = (ztr[ytr].mean(0) - ztr[~ytr].mean(0)).abs()
    ranked = torch.argsort(diff, descending=True)
    sparse, chosen = {}, {}
    for k in ks:
        if not 1 <= k <= latents.shape[1]:
            raise ValueError(f"k={k} out of range for {latents.shape[1]} latents")
        idx = ranked[:k]
        sparse[k] = probe_accuracy(ztr[:, idx], ytr, latents[test][:, idx], y[test])
        chosen[k] = idx.tolist()
    raw_acc = None
    if raw is not None:
        raw_acc = probe_accuracy(raw[train], ytr, raw[test], y[test])
    return ProbeResult(name, sparse, raw_acc, chosen)


@dataclass(frozen=True)
class AbsorptionResult:
    """Absorption of a general variable into specific latents."""

    variable: str
    main_latent: int
    main_f1: float
    main_recall: float
    """Share of the tokens where the variable holds on which the main latent is active."""
    absorption_rate: float
    """Share of those tokens where the main latent is silent and a specific latent is active."""
    miss_rate: float
    """Share where the main latent is silent and no specific latent is active."""
    specific_latents: list[int]
    """Latents specific to a part of the variable (precision >= precision_min, recall <= recall_max)."""


def absorption(
    latents: Float[Tensor, "n n_latents"],
    y: Bool[Tensor, " n"],
    *,
    name: str = "",
    precision_min: float = 0.9,
    recall_max: float = 0.5,
    min_active: int = 5,
) -> AbsorptionResult:
    """Absorption of variable ``y`` (see the module docstring)."""
    if int(y.sum()) == 0:
        raise ValueError(f"variable {name!r} never holds")
    active = latents > 0
    counts = DetectionCounts(active, y[:, None])
    f1 = counts.f1()[:, 0]
    main = int(f1.argmax())
    prec, rec = counts.precision()[:, 0], counts.recall()[:, 0]
    specific = (prec >= precision_min) & (rec <= recall_max) & (counts.n_active >= min_active)
    specific[main] = False
    on = active[y]
    main_on = on[:, main]
    spec_on = on[:, specific].any(1) if bool(specific.any()) else torch.zeros_like(main_on)
    n = float(y.sum())
    return AbsorptionResult(
        variable=name,
        main_latent=main,
        main_f1=float(f1[main]),
        main_recall=float(main_on.float().sum() / n),
        absorption_rate=float((~main_on & spec_on).float().sum() / n),
        miss_rate=float((~main_on & ~spec_on).float().sum() / n),
        specific_latents=torch.nonzero(specific).flatten().tolist(),
    )


__all__ = ["AbsorptionResult", "ProbeResult", "absorption", "balanced_split", "fit_logistic", "probe_accuracy", "sparse_probe"]
