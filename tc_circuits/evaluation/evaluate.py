"""Evaluate transcoders on held-out tokens: reconstruction quality and what splicing loses.

Two entry points, both using the model's own forward pass with hooks:

1. :func:`evaluate_reconstruction` -- one forward pass per batch caches each transcoder's
   input and output sites of the *original* model; reports FVU, explained variance, MSE, L0,
   dead-latent fraction and the latent density histogram (:class:`ReconstructionMetrics`).
2. :func:`evaluate_splice` -- per batch, the original logits, then for every configuration
   (each layer alone, then all layers at once) the spliced logits and the logits with the
   same MLPs zero-ablated and mean-ablated (mean of the MLP output over all given tokens and
   positions, computed in a first pass). Reports ΔCE, KL(original || spliced) and CE loss
   recovered (:class:`SpliceMetrics`).

CE and KL are averaged over the positions ``0..seq-2`` of every sequence (the positions
that have a next token), so both use the same ``n_tokens = batch * (seq - 1)``.

Tokens are a ``LongTensor [batch, seq]`` or an iterable of them (materialised once).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from tc_circuits.evaluation.metrics import (
    VarianceAccumulator,
    ce_recovered,
    density_histogram,
    kl_per_token,
    next_token_ce,
)
from tc_circuits.coders.clt import clt_of
from tc_circuits.models.sites import Site
from tc_circuits.evaluation.records import ReconstructionMetrics, _md_header, _md_row
from tc_circuits.evaluation.splice import TranscodersLike, as_transcoder_dict, check_transcoders, splice
from tc_circuits.evaluation.splice_clt import evaluate_clt_reconstruction

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

TokensLike = Tensor | Iterable[Tensor]


def token_batches(tokens: TokensLike, model: HookedTransformer, *, min_len: int = 1) -> list[Tensor]:
    """Validate ``tokens`` against ``model`` and return them as a list of ``[batch, seq]`` batches.

    Raises ``ValueError`` for an empty token set, a tensor that is not 2-D integer, sequences
    longer than ``model.cfg.n_ctx`` or shorter than ``min_len``, and ids outside the vocabulary.
    """
    batches = [tokens] if isinstance(tokens, Tensor) else list(tokens)
    out: list[Tensor] = []
    for i, batch in enumerate(batches):
        if not isinstance(batch, Tensor):
            raise ValueError(f"token batch {i} is a {type(batch).__name__}, expected a LongTensor")
        if batch.ndim != 2 or batch.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"token batch {i} must be an integer tensor [batch, seq], got {batch.dtype} "
                f"with shape {tuple(batch.shape)}"
            )
        if batch.numel() == 0:
            continue
        seq = batch.shape[1]
        if seq > model.cfg.n_ctx:
            raise ValueError(
                f"token batch {i} has sequences of length {seq} > model.cfg.n_ctx={model.cfg.n_ctx}"
            )
        if seq < min_len:
            raise ValueError(f"token batch {i} has sequences of length {seq} < {min_len}")
        lo, hi = int(batch.min()), int(batch.max())
        if lo < 0 or hi >= model.cfg.d_vocab:
            raise ValueError(f"token ids must be in [0, {model.cfg.d_vocab}), got range [{lo}, {hi}]")
        out.append(batch.long().to(model.cfg.device))
    if not out:
        raise ValueError("empty token set: nothing to evaluate")
    return out


def _kind(tc: Any) -> str:
    return "sae" if tc.cfg.is_sae else ("skip_transcoder" if tc.cfg.skip else "transcoder")


@torch.no_grad()
def evaluate_reconstruction(
    model: HookedTransformer,
    transcoders: TranscodersLike,
    tokens: TokensLike,
    *,
    start_pos: int = 0,
    bins: int = 20,
) -> dict[int, ReconstructionMetrics]:
    """FVU, L0, dead fraction and density of each transcoder on the original model's activations.

    ``start_pos`` drops the first positions of every sequence (e.g. 1 to skip a BOS token).
    """
    tcs = as_transcoder_dict(transcoders)
    check_transcoders(model, tcs)
    batches = token_batches(tokens, model, min_len=start_pos + 1)
    clt = clt_of(tcs)
    if clt is not None:  # a cross-layer transcoder: every layer's output needs all earlier layers' latents
        return {L: m for L, m in evaluate_clt_reconstruction(model, clt, batches, start_pos=start_pos, bins=bins).items() if L in tcs}
    names = sorted({s.hook_for(model) for tc in tcs.values() for s in (tc.cfg.in_site, tc.cfg.out_site)})
    acc = {layer: VarianceAccumulator(tc.cfg.d_out) for layer, tc in tcs.items()}
    fires = {layer: torch.zeros(tc.cfg.n_latents, dtype=torch.int64) for layer, tc in tcs.items()}
    l0_sum = {layer: 0.0 for layer in tcs}
    n_tokens = 0
    for batch in batches:
        _, cache = model.run_with_cache(batch, names_filter=names, return_type=None)
        n_tokens += batch.shape[0] * (batch.shape[1] - start_pos)
        for layer, tc in tcs.items():
            p = tc.W_enc
            x = cache[tc.cfg.in_site.hook_for(model)][:, start_pos:].to(device=p.device, dtype=p.dtype)
            y = cache[tc.cfg.out_site.hook_for(model)][:, start_pos:]
            out = tc(x)
            acc[layer].update(out.output, y)
            active = (out.latents != 0).reshape(-1, tc.cfg.n_latents)
            fires[layer] += active.sum(0).cpu()
            l0_sum[layer] += float(active.sum())
    results = {}
    for layer, tc in tcs.items():
        f = acc[layer].fvu
        results[layer] = ReconstructionMetrics(
            layer=layer,
            kind=_kind(tc),
            fvu=f,
            explained_variance=1.0 - f,
            mse=acc[layer].mse,
            l0=l0_sum[layer] / n_tokens,
            dead_fraction=float((fires[layer] == 0).double().mean()),
            n_tokens=n_tokens,
            n_latents=tc.cfg.n_latents,
            density=density_histogram(fires[layer], n_tokens, bins=bins),
        )
    return results


@dataclass(frozen=True)
class SpliceMetrics:
    """What is lost when the MLPs at ``layers`` are replaced by their transcoders."""

    layers: tuple[int, ...]
    error_term: bool
    ce_orig: float
    ce_spliced: float
    delta_ce: float
    kl: float
    ce_zero_ablation: float
    ce_mean_ablation: float
    recovered_zero: float
    recovered_mean: float
    n_tokens: int

    COLUMNS = (
        "layers", "ce_orig", "ce_spliced", "delta_ce", "kl", "ce_zero_ablation",
        "ce_mean_ablation", "recovered_zero", "recovered_mean", "n_tokens",
    )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def markdown_header(cls) -> str:
        return _md_header(list(cls.COLUMNS))

    def markdown_row(self) -> str:
        vals = [getattr(self, n) for n in self.COLUMNS]
        vals[0] = ",".join(str(x) for x in self.layers)
        return _md_row(vals)


@dataclass(frozen=True)
class SpliceReport:
    """:class:`SpliceMetrics` for each configuration (each layer alone, then all at once)."""

    rows: list[SpliceMetrics]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [r.to_dict() for r in self.rows]}

    def to_markdown(self) -> str:
        return "\n".join([SpliceMetrics.markdown_header(), *(r.markdown_row() for r in self.rows)])

    def get(self, layers: tuple[int, ...] | int) -> SpliceMetrics:
        key = (layers,) if isinstance(layers, int) else tuple(layers)
        for row in self.rows:
            if row.layers == key:
                return row
        raise KeyError(f"no splice configuration for layers {key}")


def _mlp_out_means(model: HookedTransformer, layers: list[int], batches: list[Tensor]) -> dict[int, Tensor]:
    names = [Site(layer, "mlp_out").hook_for(model) for layer in layers]
    sums = {layer: torch.zeros(model.cfg.d_model, dtype=torch.float64) for layer in layers}
    n = 0
    for batch in batches:
        _, cache = model.run_with_cache(batch, names_filter=names, return_type=None)
        n += batch.shape[0] * batch.shape[1]
        for layer, name in zip(layers, names):
            sums[layer] += cache[name].double().sum((0, 1)).cpu()
    return {layer: (s / n) for layer, s in sums.items()}


def _ablation_hooks(
    layers: tuple[int, ...], means: dict[int, Tensor] | None, model: Any
) -> list[tuple[str, Any]]:
    hooks = []
    for layer in layers:
        if means is None:

            def hook(act: Tensor, hook: Any) -> Tensor:
                return torch.zeros_like(act)

        else:

            def hook(act: Tensor, hook: Any, m: Tensor = means[layer]) -> Tensor:
                return m.to(device=act.device, dtype=act.dtype).expand_as(act).clone()

        hooks.append((Site(layer, "mlp_out").hook_for(model), hook))
    return hooks


@torch.no_grad()
def evaluate_splice(
    model: HookedTransformer,
    transcoders: TranscodersLike,
    tokens: TokensLike,
    *,
    per_layer: bool = True,
    all_layers: bool = True,
    error_term: bool = False,
) -> SpliceReport:
    """ΔCE, KL and CE recovered when splicing each layer alone and all layers at once."""
    tcs = as_transcoder_dict(transcoders)
    check_transcoders(model, tcs)
    for layer, tc in tcs.items():
        if tc.cfg.out_site.kind != "mlp_out":
            raise ValueError(f"transcoder for layer {layer} writes {tc.cfg.output_site}, not an MLP output")
    if not (per_layer or all_layers):
        raise ValueError("nothing to evaluate: per_layer and all_layers are both False")
    batches = token_batches(tokens, model, min_len=2)
    layers = sorted(tcs)
    configs: list[tuple[int, ...]] = [(layer,) for layer in layers] if per_layer else []
    if all_layers and (len(layers) > 1 or not per_layer):
        configs.append(tuple(layers))
    means = _mlp_out_means(model, layers, batches)
    totals = {c: {"spliced": 0.0, "kl": 0.0, "zero": 0.0, "mean": 0.0} for c in configs}
    ce_orig_total, n = 0.0, 0
    for batch in batches:
        logits = model(batch)
        ce_orig_total += float(next_token_ce(logits, batch).sum())
        n += batch.shape[0] * (batch.shape[1] - 1)
        for config in configs:
            t = totals[config]
            spliced = _run_spliced(model, batch, tcs, config, error_term)
            t["spliced"] += float(next_token_ce(spliced, batch).sum())
            t["kl"] += float(kl_per_token(logits[:, :-1], spliced[:, :-1]).sum())
            for key, m in (("zero", None), ("mean", means)):
                ablated = model.run_with_hooks(batch, fwd_hooks=_ablation_hooks(config, m, model))
                t[key] += float(next_token_ce(ablated, batch).sum())
    ce_orig = ce_orig_total / n
    rows = []
    for config in configs:
        t = {k: v / n for k, v in totals[config].items()}
        rows.append(
            SpliceMetrics(
                layers=config,
                error_term=error_term,
                ce_orig=ce_orig,
                ce_spliced=t["spliced"],
                delta_ce=t["spliced"] - ce_orig,
                kl=t["kl"],
                ce_zero_ablation=t["zero"],
                ce_mean_ablation=t["mean"],
                recovered_zero=ce_recovered(ce_orig, t["spliced"], t["zero"]),
                recovered_mean=ce_recovered(ce_orig, t["spliced"], t["mean"]),
                n_tokens=n,
            )
        )
    return SpliceReport(rows)


def _run_spliced(
    model: HookedTransformer, batch: Tensor, tcs: dict, config: tuple[int, ...], error_term: bool
) -> Float[Tensor, "batch pos d_vocab"]:
    with splice(model, tcs, layers=config, error_term=error_term):
        return model(batch)
