"""Ground-truth interpretability: how well each latent detects a known binary variable.

Given latent activations ``[n, n_latents]`` on tokens whose variables are known
(``[n, n_vars]`` booleans, e.g. :func:`tc_circuits.organism.labels.binary_variables`):

1. **detection counts** -- for every latent x variable pair, with "latent active" = activation
   > 0: ``TP = active & holds``; precision ``TP / #active``, recall ``TP / #holds``,
   F1 ``2 TP / (#active + #holds)`` (one matrix product, no loop over pairs);
2. **best match** -- each latent's variable with the highest F1 (ties: the first), and the
   AUROC of its activation value as a score for that variable (Mann-Whitney with tied
   ranks averaged; 0.5 = chance, 1 = a threshold separates perfectly);
3. **dictionary score** -- over the *alive* latents (active at least once on these tokens):
   the mean best F1, the mean AUROC, and the share of latents whose best F1 reaches
   ``threshold`` (default 0.5: the latent is more right than wrong about its variable).

A latent that *is* a variable scores F1 = AUROC = 1; a latent firing at random scores AUROC
near 0.5 and F1 near the chance value ``2 p q / (p + q)`` (firing rate p, base rate q).
Limits: the variables are only those the corpus generator knows (a latent tracking something
else scores low); F1 rewards one-to-one matches, so a latent splitting a variable in two
(absorption) scores about half; the corpus is synthetic, not natural language.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def auroc(scores: Float[Tensor, " n"], labels: Bool[Tensor, " n"]) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` (ties count one half)."""
    n_pos, n = int(labels.sum()), int(labels.numel())
    if n_pos == 0 or n_pos == n:
        raise ValueError(f"AUROC needs both classes; got {n_pos} positives of {n}")
    s = scores.double()
    if bool((s >= 0).all()):
        # Sparse latents: rank only the non-zero scores; the zeros are one tie group.
        nz = s > 0
        zp, zn = int((~nz & labels).sum()), int((~nz & ~labels).sum())
        n_neg = n - n_pos
        pairs = _mann_whitney(s[nz], labels[nz]) + (n_pos - zp) * zn + 0.5 * zp * zn
        return float(pairs / (n_pos * n_neg))
    return float(_mann_whitney(s, labels) / (n_pos * (n - n_pos)))


def _mann_whitney(s: Tensor, labels: Tensor) -> float:
    """Number of (positive, negative) pairs ordered correctly, ties counting one half."""
    n_pos, n = int(labels.sum()), int(labels.numel())
    if n_pos == 0 or n_pos == n:
        return 0.0
    order = torch.argsort(s)
    _, inverse, counts = torch.unique_consecutive(s[order], return_inverse=True, return_counts=True)
    avg = torch.cumsum(counts, 0).double() - (counts.double() - 1) / 2  # mean rank of each tie group
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = avg[inverse]
    return float(ranks[labels].sum() - n_pos * (n_pos + 1) / 2)


class DetectionCounts:
    """``TP``, ``#active`` and ``#holds`` for every latent x variable pair."""

    def __init__(self, active: Bool[Tensor, "n n_latents"], holds: Bool[Tensor, "n n_vars"]):
        if active.shape[0] != holds.shape[0]:
            raise ValueError(f"{active.shape[0]} activation rows but {holds.shape[0]} label rows")
        a, h = active.float(), holds.float()
        self.tp: Float[Tensor, "n_latents n_vars"] = a.T @ h  # exact integers below 2**24 rows
        self.n_active: Float[Tensor, " n_latents"] = a.sum(0)
        self.n_holds: Float[Tensor, " n_vars"] = h.sum(0)

    def f1(self) -> Float[Tensor, "n_latents n_vars"]:
        den = self.n_active[:, None] + self.n_holds[None, :]
        return torch.where(den > 0, 2 * self.tp / den.clamp_min(1), torch.zeros_like(self.tp))

    def precision(self) -> Float[Tensor, "n_latents n_vars"]:
        return self.tp / self.n_active[:, None].clamp_min(1)

    def recall(self) -> Float[Tensor, "n_latents n_vars"]:
        return self.tp / self.n_holds[None, :].clamp_min(1)


@dataclass
class InterpretabilityScore:
    """Per-latent best matches and the dictionary-level summary."""

    best_variable: list[str]
    """Best-matching variable of each latent (by F1); '' for a dead latent."""
    f1: Float[Tensor, " n_latents"]
    precision: Float[Tensor, " n_latents"]
    recall: Float[Tensor, " n_latents"]
    auroc: Float[Tensor, " n_latents"]
    """AUROC of the activation value for the best variable (NaN for dead latents)."""
    alive: Bool[Tensor, " n_latents"]
    threshold: float
    family_share: dict[str, float] = field(default_factory=dict)
    """Share of matched latents (best F1 >= threshold) whose variable is of each family."""

    @property
    def score(self) -> float:
        """Mean best F1 over alive latents: the dictionary's interpretability score."""
        return float(self.f1[self.alive].mean()) if bool(self.alive.any()) else 0.0

    @property
    def mean_auroc(self) -> float:
        return float(self.auroc[self.alive].mean()) if bool(self.alive.any()) else float("nan")

    @property
    def matched_share(self) -> float:
        """Share of alive latents whose best F1 reaches ``threshold``."""
        return float((self.f1[self.alive] >= self.threshold).float().mean()) if bool(self.alive.any()) else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "interp_f1": self.score,
            "interp_auroc": self.mean_auroc,
            "matched_share": self.matched_share,
            "threshold": self.threshold,
            "alive": int(self.alive.sum()),
            "family_share": self.family_share,
        }

    def top_latents(self, n: int = 10) -> list[tuple[int, str, float, float]]:
        """The ``n`` best-matching latents: (latent, variable, F1, AUROC)."""
        order = torch.argsort(torch.where(self.alive, self.f1, -1.0), descending=True)[:n]
        return [(int(i), self.best_variable[i], float(self.f1[i]), float(self.auroc[i])) for i in order]


def score_latents(
    latents: Float[Tensor, "n n_latents"],
    holds: Bool[Tensor, "n n_vars"],
    names: list[str],
    *,
    families: list[str] | None = None,
    threshold: float = 0.5,
    exclude_families: Iterable[str] = (),
) -> InterpretabilityScore:
    """Score every latent against the variables (see the module docstring).

    ``exclude_families`` drops variable families before matching (e.g. ``("token",)`` to ask
    which latents track a *role* rather than the current token's identity).
    """
    if len(names) != holds.shape[1]:
        raise ValueError(f"{len(names)} names for {holds.shape[1]} variables")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    families = families or ["" for _ in names]
    keep = [i for i, f in enumerate(families) if f not in set(exclude_families)]
    if not keep:
        raise ValueError("every variable family is excluded")
    holds, names, families = holds[:, keep], [names[i] for i in keep], [families[i] for i in keep]
    active = latents > 0
    counts = DetectionCounts(active, holds)
    f1 = counts.f1()
    best = f1.argmax(1)
    rows = torch.arange(f1.shape[0])
    alive = counts.n_active > 0
    au = torch.full((f1.shape[0],), float("nan"))
    for i in torch.nonzero(alive).flatten().tolist():
        y = holds[:, best[i]]
        if 0 < int(y.sum()) < y.numel():
            au[i] = auroc(latents[:, i], y)
    best_f1 = f1[rows, best]
    matched = alive & (best_f1 >= threshold)
    fam: dict[str, float] = {}
    if bool(matched.any()):
        for i in torch.nonzero(matched).flatten().tolist():
            fam[families[best[i]]] = fam.get(families[best[i]], 0) + 1
        fam = {k: v / int(matched.sum()) for k, v in sorted(fam.items())}
    return InterpretabilityScore(
        best_variable=[names[b] if a else "" for b, a in zip(best.tolist(), alive.tolist())],
        f1=best_f1,
        precision=counts.precision()[rows, best],
        recall=counts.recall()[rows, best],
        auroc=au,
        alive=alive,
        threshold=threshold,
        family_share=fam,
    )


@torch.no_grad()
def dictionary_activations(
    model, transcoders: dict, batches: Iterable[Int[Tensor, "rows seq"]], *, start_pos: int = 1
) -> dict[int, tuple[Float[Tensor, "n d_in"], Float[Tensor, "n n_latents"]]]:
    """``{layer: (input activation, latents)}`` over every token at positions ``>= start_pos``
    (flattened in row order, as :func:`tc_circuits.organism.labels.binary_variables`)."""
    names = {tc.cfg.input_site for tc in transcoders.values()}
    xs: dict[int, list[Tensor]] = {int(L): [] for L in transcoders}
    zs: dict[int, list[Tensor]] = {int(L): [] for L in transcoders}
    device = next(model.parameters()).device
    for tokens in batches:
        _, cache = model.run_with_cache(tokens.to(device), names_filter=lambda n: n in names)
        for L, tc in transcoders.items():
            x = cache[tc.cfg.input_site][:, start_pos:].reshape(-1, tc.cfg.d_in).to(tc.W_enc.dtype)
            xs[int(L)].append(x.cpu())
            zs[int(L)].append(tc.encode(x).cpu())
    return {L: (torch.cat(xs[L]), torch.cat(zs[L])) for L in xs}


__all__ = ["DetectionCounts", "InterpretabilityScore", "auroc", "dictionary_activations", "score_latents"]
