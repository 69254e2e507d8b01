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

:func:`intervene_on_graph` does this on a saved graph's prompt (after checking the model
and dictionaries are the graph's own) and reports every target's value clean, frozen and
live; ``tc-circuits intervene`` is its command line.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterable
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tc_circuits.attribution.engine import to_tokens
from tc_circuits.coders.clt import decode_output, layer_coders
from tc_circuits.attribution.linearise import check_transcoders
from tc_circuits.models import backend
from tc_circuits.models.block_plan import block_plan
from tc_circuits.models.safe_hooks import hooks_restored, temporary_hooks
from tc_circuits.models.sites import Site
from tc_circuits.validate import check_spliceable


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
    interventions: Iterable[FeatureIntervention | tuple] = (),  # checked below (clear messages)
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
    check_spliceable(transcoders, model.cfg.model_name)
    tokens = to_tokens(model, prompt_or_tokens)
    P = int(tokens.shape[0])
    ivs = []
    for iv in interventions:
        iv = FeatureIntervention(*iv)
        try:  # ints (numpy / 0-d tensor ints too); a float position or latent is refused
            iv = iv._replace(**{n: operator.index(getattr(iv, n)) for n in ("layer", "pos", "latent")})
        except TypeError as err:
            raise ValueError(f"intervention {iv}: layer, pos and latent must be integers") from err
        ivs.append(iv)
    for iv in ivs:
        tc = transcoders.get(iv.layer)
        if tc is None:
            raise ValueError(f"intervention on layer {iv.layer}, which has no transcoder")
        if not 0 <= iv.pos < P or not 0 <= iv.latent < tc.cfg.n_latents:
            raise ValueError(f"intervention {iv} out of range (n_pos={P}, n_latents={tc.cfg.n_latents})")
        if not math.isfinite(float(iv.value)):
            raise ValueError(f"intervention {iv}: value must be a finite number, got {iv.value!r}")
    if mode == "frozen" and not backend.norm_scale_hooks_live(model):
        raise ValueError(
            "mode='frozen' needs writable norm-scale hooks; this TransformerBridge (TransformerLens "
            f"{backend.tl_version()}, RMSNorm) runs Hugging Face's norm and ignores writes to hook_scale: "
            "use TransformerLens >= 4, a HookedTransformer, or mode='live'"
        )
    device = next(model.parameters()).device
    toks = tokens[None].to(device)
    # every norm scale the block plan freezes (ln1, ln2, attention post-norms, ln_final) + patterns
    frozen_names = set(block_plan(model).frozen_scale_hooks())
    frozen_names |= {Site(L, "attn_pattern").hook_for(model) for L in range(model.cfg.n_layers)}
    io_names = {Site(L, k).hook_for(model) for L in transcoders for k in ("mlp_in", "mlp_out")}
    with torch.no_grad(), hooks_restored(model):  # an interrupt never leaves a caching hook
        _, cache = model.run_with_cache(toks, names_filter=lambda n: n in frozen_names | io_names)
        clean_lat, errors = {}, {}
        for L, tc in sorted(transcoders.items()):
            x_model = cache[Site(L, "mlp_in").hook_for(model)]
            x = x_model.to(tc.W_enc.dtype)
            clean_lat[L] = tc.encode(x)
            out = decode_output(transcoders, L, clean_lat, x)
            errors[L] = cache[Site(L, "mlp_out").hook_for(model)] - out.to(x_model.dtype)

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

        hooks += [(Site(L, "mlp_in").hook_for(model), capture), (Site(L, "mlp_out").hook_for(model), replace)]
    with torch.no_grad(), temporary_hooks(model, hooks):
        logits = model(toks)
    return InterventionResult(logits[0].detach(), acts, pres)


# ---------------------------------------------------------------------------- on a saved graph
_SPEC = re.compile(r"^L?(\d+):(\d+)@(-?\d+)(?:=(.+))?$")


def parse_feature_spec(spec: str, *, steer: bool = False) -> FeatureIntervention:
    """``"L0:527@12"`` -> ``FeatureIntervention(layer=0, pos=12, latent=527, value=0.0)`` (an
    ablation); ``"L1:72@12=2.0"`` -> value 2.0 (steering: the activation is set to the value).

    Positions may be negative (counted from the end of the prompt).
    """
    m = _SPEC.match(spec.strip()) if isinstance(spec, str) else None
    if m is None:
        form = "L<layer>:<latent>@<pos>=<value>" if steer else "L<layer>:<latent>@<pos>"
        raise ValueError(f"cannot read feature {spec!r}; expected {form}, e.g. "
                         + ("L1:72@12=2.0" if steer else "L0:527@12"))
    if steer and m.group(4) is None:
        raise ValueError(f"steering {spec!r} needs a value: L<layer>:<latent>@<pos>=<value>")
    if not steer and m.group(4) is not None:
        raise ValueError(f"ablation {spec!r} takes no value (use --steer to set one)")
    try:
        value = float(m.group(4)) if steer else 0.0
    except ValueError as err:
        raise ValueError(f"steering value in {spec!r} is not a number") from err
    return FeatureIntervention(layer=int(m.group(1)), pos=int(m.group(3)), latent=int(m.group(2)), value=value)


class TargetChange(NamedTuple):
    """How one of a graph's targets changes under the interventions."""

    label: str
    """The target's label."""
    position: int
    """Position the target is read at."""
    clean: float
    """Value in the unmodified model."""
    frozen: float
    """Value with the interventions, attention patterns and LayerNorm scales frozen."""
    live: float
    """Value with the interventions in the real (live) model."""
    direct: float
    """Change predicted by the graph's direct edges (the frozen change with other features held)."""

    @property
    def frozen_change(self) -> float:
        return self.frozen - self.clean

    @property
    def live_change(self) -> float:
        return self.live - self.clean


def graph_targets(graph) -> list[tuple[str, int, Tensor]]:
    """``(label, position, direction over the vocabulary)`` of each of the graph's targets."""
    from tc_circuits.attribution.targets import decode_direction

    out = []
    d_vocab = int(graph.metadata.get("d_vocab", 0))
    for t, info in enumerate(graph.metadata.get("targets") or []):
        label = graph.target_labels[t] if t < len(graph.target_labels) else info.get("label", f"target {t}")
        if isinstance(info.get("direction"), dict):
            direction = decode_direction(info["direction"])
        elif int(info.get("token_id", -1)) >= 0 and d_vocab:
            direction = torch.full((d_vocab,), -1.0 / d_vocab)  # a demeaned logit (graphs before directions were stored)
            direction[int(info["token_id"])] += 1.0
        else:
            raise ValueError(f"the graph does not store the direction of target {label!r}; rebuild it to intervene")
        out.append((label, int(info["position"]), direction))
    if not out:
        raise ValueError("the graph records no targets")
    return out


def intervene_on_graph(
    graph,
    model,
    transcoders: dict,
    interventions: Iterable[FeatureIntervention | tuple[int, int, int, float]],
    *,
    recompute_features: bool = True,
) -> list[TargetChange]:
    """Apply ``interventions`` on the graph's prompt; each target's value clean, frozen and live.

    Refuses (``ProvenanceError``) a model or dictionaries other than the graph's. Negative
    positions count from the end of the prompt. ``direct`` is what the graph predicts: the sum
    over intervened features of ``edge(target <- feature) * (value - a) / a`` (exactly the
    frozen change when ``recompute_features=False``).
    """
    from tc_circuits.graph.provenance import check_graph_model, check_graph_transcoders

    check_graph_model(graph, model)
    check_graph_transcoders(graph, transcoders)
    P = graph.n_pos
    ivs = []
    for iv in interventions:
        iv = FeatureIntervention(*iv)
        pos = iv.pos + P if iv.pos < 0 else iv.pos
        ivs.append(iv._replace(pos=pos))
    targets = graph_targets(graph)
    tokens = graph.prompt_tokens
    runs = {
        "clean": intervene(model, transcoders, tokens, (), mode="frozen", recompute_features=recompute_features),
        "frozen": intervene(model, transcoders, tokens, ivs, mode="frozen", recompute_features=recompute_features),
        "live": intervene(model, transcoders, tokens, ivs, mode="live", recompute_features=recompute_features),
    }
    n = graph.nodes
    feat = graph.indices_of("feature")
    key = {(int(n.layer[i]), int(n.pos[i]), int(n.latent[i])): int(i) for i in feat}
    et, es, ew = graph.edge_target.long(), graph.edge_source.long(), graph.edge_weight.double()
    out = []
    for t, (label, pos, d) in enumerate(targets):
        vals = {k: float(r.logits[pos].double().cpu() @ d.double()) for k, r in runs.items()}
        tidx = int(graph.target_indices[t])
        direct = 0.0
        for iv in ivs:
            i = key.get((iv.layer, iv.pos, iv.latent))
            if i is None:  # inactive in the graph: no edge to predict from
                direct = float("nan")
                continue
            a = float(n.activation[i])
            w = float(ew[(et == tidx) & (es == i)].sum())
            direct += w * (iv.value - a) / a if a != 0 else 0.0
        out.append(TargetChange(label, pos, vals["clean"], vals["frozen"], vals["live"], direct))
    return out
