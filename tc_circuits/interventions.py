"""Ablate or steer transcoder features and read the logits and downstream activations.

Every covered MLP is replaced by its transcoder plus the error of the *clean* run (a
constant), so with no interventions the model is exactly the original one. Then:

* ``mode="live"``: attention patterns and LayerNorm scales are recomputed (the real model);
* ``mode="frozen"``: they are fixed to the clean run's values (the attribution engine's
  linearised model).

``recompute_features=True`` re-encodes every transcoder's latents from its (changed) input;
``False`` holds all non-intervened latents at their clean values. In frozen mode with
features held fixed the model is linear in the feature activations, so removing feature
``s`` changes a target by exactly minus the direct edge ``A[t, s]``; with features
recomputed the change is the total effect (direct + through downstream features).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tc_circuits.attribution.engine import to_tokens
from tc_circuits.coders.clt import decode_output, layer_coders
from tc_circuits.attribution.linearise import check_transcoders
from tc_circuits.models.sites import Site, global_hook


class FeatureIntervention(NamedTuple):
    """Set latent ``latent`` of layer ``layer`` at position ``pos`` to ``value`` (0 ablates)."""

    layer: int
    pos: int
    latent: int
    value: float


class InterventionResult(NamedTuple):
    """Outputs of an intervened forward pass."""

    logits: Float[Tensor, "pos d_vocab"]
    """Logits of the intervened model."""
    activations: dict[int, Tensor]
    """Latent activations ``[pos, n_latents]`` per covered layer (after the interventions)."""
    pre_activations: dict[int, Tensor]
    """Encoder pre-activations ``[pos, n_latents]`` per covered layer."""


def intervene(
    model,
    transcoders,
    prompt_or_tokens: str | Int[Tensor, " pos"] | list[int],
    interventions: Iterable[FeatureIntervention | tuple[int, int, int, float]] = (),
    *,
    mode: str = "frozen",
    recompute_features: bool = True,
) -> InterventionResult:
    """Run ``model`` with transcoders spliced in (+ clean error) and ``interventions`` applied.

    ``transcoders``: ``{layer: Transcoder}`` or a ``CrossLayerTranscoder`` (whose layer-L
    latents also feed every later layer's output).
    """
    if mode not in ("frozen", "live"):
        raise ValueError(f"mode must be 'frozen' or 'live', got {mode!r}")
    transcoders = layer_coders(transcoders)
    check_transcoders(model, transcoders)
    tokens = to_tokens(model, prompt_or_tokens)
    P = int(tokens.shape[0])
    ivs = [FeatureIntervention(*iv) for iv in interventions]
    for iv in ivs:
        tc = transcoders.get(iv.layer)
        if tc is None:
            raise ValueError(f"intervention on layer {iv.layer}, which has no transcoder")
        if not 0 <= iv.pos < P or not 0 <= iv.latent < tc.cfg.n_latents:
            raise ValueError(f"intervention {iv} out of range (n_pos={P}, n_latents={tc.cfg.n_latents})")
    device = next(model.parameters()).device
    toks = tokens[None].to(device)
    frozen_names = set()
    for L in range(model.cfg.n_layers):
        frozen_names |= {Site(L, "attn_pattern").hook_name}
        if model.cfg.normalization_type is not None:
            frozen_names |= {Site(L, "ln1_scale").hook_name, Site(L, "ln2_scale").hook_name}
    if model.cfg.normalization_type is not None:
        frozen_names.add(global_hook("ln_final_scale"))
    io_names = {Site(L, k).hook_name for L in transcoders for k in ("mlp_in", "mlp_out")}
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=lambda n: n in frozen_names | io_names)
        clean_lat, errors = {}, {}
        for L, tc in sorted(transcoders.items()):
            x = cache[Site(L, "mlp_in").hook_name].to(tc.W_enc.dtype)
            clean_lat[L] = tc.encode(x)
            out = decode_output(transcoders, L, clean_lat, x)
            errors[L] = cache[Site(L, "mlp_out").hook_name] - out.to(cache[Site(L, "mlp_in").hook_name].dtype)

    captured: dict[int, Tensor] = {}
    batch_lat: dict[int, Tensor] = {}  # this pass's latents [1, pos, n] per layer (read by later layers of a CLT)
    acts: dict[int, Tensor] = {}
    pres: dict[int, Tensor] = {}
    hooks = []
    if mode == "frozen":
        for name in frozen_names:
            hooks.append((name, lambda x, hook, v=cache[name]: v))

    for L, tc in transcoders.items():
        here = [iv for iv in ivs if iv.layer == L]

        def capture(x, hook, L=L):
            captured[L] = x
            return x

        def replace(y, hook, L=L, tc=tc, here=here):
            x = captured[L].to(tc.W_enc.dtype)
            pre = tc.pre_acts(x)
            lat = tc.activate(pre) if recompute_features else clean_lat[L].clone()
            for iv in here:
                lat[:, iv.pos, iv.latent] = iv.value
            acts[L], pres[L] = lat[0].detach(), pre[0].detach()
            batch_lat[L] = lat
            out = decode_output(transcoders, L, batch_lat, x)
            return (out + errors[L].to(tc.W_dec.dtype)).to(y.dtype)

        hooks += [(Site(L, "mlp_in").hook_name, capture), (Site(L, "mlp_out").hook_name, replace)]
    with torch.no_grad():
        logits = model.run_with_hooks(toks, fwd_hooks=hooks)
    return InterventionResult(logits[0].detach(), acts, pres)
