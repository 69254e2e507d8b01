"""Splicing a cross-layer transcoder, and its reconstruction metrics.

:func:`clt_hooks` are the hooks :func:`tc_circuits.evaluation.splice.splice` installs for a
CLT: at every layer's ``mlp_in`` the encoder of that layer runs on the *current* (spliced)
input and its latents are kept for the rest of the pass; at each spliced layer's ``mlp_out``
the output is replaced by ``sum_{L <= L'} a_L @ W_dec[L -> L'] + b_dec[L'] (+ skip)``, plus
the error ``(y - recon).detach()`` with ``error_term=True``. Layers that are not spliced keep
their MLP, but their encoders still run (later spliced layers read their latents).

:func:`evaluate_clt_reconstruction` is :func:`~tc_circuits.evaluation.evaluate.evaluate_reconstruction`
for a CLT: FVU of every output layer from the original model's inputs, L0 / dead fraction /
density of every layer's encoder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tc_circuits.coders.clt import CrossLayerTranscoder, decode_output
from tc_circuits.evaluation.metrics import VarianceAccumulator, density_histogram
from tc_circuits.evaluation.records import ReconstructionMetrics
from tc_circuits.models.sites import Site

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

    from tc_circuits.evaluation.splice import SpliceState


def clt_hooks(state: SpliceState, clt: CrossLayerTranscoder, retain_grad: bool, model: Any) -> list[tuple[str, Any]]:
    """Forward hooks splicing ``clt`` into ``model`` at the layers of ``state.transcoders`` (see the module doc)."""
    views = clt.layers()
    spliced = set(state.transcoders)
    latents: dict[int, Tensor] = {}
    inputs: dict[int, Tensor] = {}
    hooks: list[tuple[str, Any]] = []
    for L, view in views.items():

        def in_hook(act: Tensor, hook: Any, L: int = L) -> None:
            if L == 0:
                latents.clear()  # a new forward pass
                inputs.clear()
            p = views[L].W_enc
            x = act.to(device=p.device, dtype=p.dtype)
            lat = views[L].encode(x)
            if retain_grad and lat.requires_grad:
                lat.retain_grad()
            latents[L], inputs[L] = lat, x
            state.inputs[L] = act
            state.latents[L] = lat
            return None

        hooks.append((view.cfg.in_site.hook_for(model), in_hook))
        if L not in spliced:
            continue

        def out_hook(act: Tensor, hook: Any, L: int = L) -> Tensor:
            if L not in inputs or any(j not in latents for j in range(L + 1)):
                raise RuntimeError(f"splice: the CLT encoders of layers 0..{L} did not all fire before {hook.name}")
            recon = decode_output(views, L, {j: latents[j] for j in range(L + 1)}, inputs[L])
            recon = recon.to(device=act.device, dtype=act.dtype)
            state.reconstructions[L] = recon
            state.errors[L] = (act - recon).detach()
            state.n_forward += 1
            return recon + state.errors[L] if state.error_term else recon

        hooks.append((view.cfg.out_site.hook_for(model), out_hook))
    return hooks


@torch.no_grad()
def evaluate_clt_reconstruction(
    model: HookedTransformer, clt: CrossLayerTranscoder, batches: list[Tensor], *, start_pos: int = 0, bins: int = 20
) -> dict[int, ReconstructionMetrics]:
    """FVU per output layer, L0 / dead fraction / density per encoder layer, on the original model."""
    N, n = clt.cfg.n_layers, clt.cfg.n_latents
    ins = [Site(L, clt.cfg.input_kind).hook_for(model) for L in range(N)]
    outs = [Site(L, clt.cfg.output_kind).hook_for(model) for L in range(N)]
    names = ins + outs
    acc = [VarianceAccumulator(clt.cfg.d_out) for _ in range(N)]
    fires = [torch.zeros(n, dtype=torch.int64) for _ in range(N)]
    l0 = [0.0] * N
    n_tokens = 0
    p = clt.W_enc
    for batch in batches:
        _, cache = model.run_with_cache(batch, names_filter=names, return_type=None)
        n_tokens += batch.shape[0] * (batch.shape[1] - start_pos)
        xs = [cache[ins[L]][:, start_pos:].to(p.device, p.dtype) for L in range(N)]
        out = clt(xs)
        for L in range(N):
            acc[L].update(out.outputs[L], cache[outs[L]][:, start_pos:])
            active = (out.latents[L] != 0).reshape(-1, n)
            fires[L] += active.sum(0).cpu()
            l0[L] += float(active.sum())
    return {
        L: ReconstructionMetrics(
            layer=L, kind="clt", fvu=acc[L].fvu, explained_variance=1.0 - acc[L].fvu, mse=acc[L].mse,
            l0=l0[L] / n_tokens, dead_fraction=float((fires[L] == 0).double().mean()), n_tokens=n_tokens,
            n_latents=n, density=density_histogram(fires[L], n_tokens, bins=bins),
        )
        for L in range(N)
    }


__all__ = ["clt_hooks", "evaluate_clt_reconstruction"]
