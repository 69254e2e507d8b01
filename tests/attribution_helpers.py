"""Helpers for the attribution tests: random transcoders and an independent frozen model.

``HookedFrozen`` re-implements the local replacement model with TransformerLens hooks on the
real model (cached LN scales and attention patterns patched in, MLP outputs replaced by
constant feature contributions + error + the live skip path). It shares no code with the
engine, so comparing the engine's edges with interventions here is an independent check.
It works on every family TransformerLens runs (parallel blocks, post-norms, rotary, GQA):
every ``hook_scale`` and ``hook_pattern`` of the real model is frozen, and with a final-logit
soft-cap ``run`` returns the pre-cap logits (the unembedding's output).
"""

from __future__ import annotations

import torch
from conftest import make_tiny_model

from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig, TranscoderSet


def make_model64(**kwargs):
    """``make_tiny_model`` in float64 (tight numerical comparisons)."""
    model = make_tiny_model(**kwargs)
    model.cfg.dtype = torch.float64
    model.to(torch.float64)
    return model


def make_transcoders(
    model,
    *,
    activation: str = "topk",
    skip: bool = True,
    n_latents: int = 64,
    k: int = 4,
    layers=None,
    seed: int = 0,
) -> TranscoderSet:
    """Random transcoders with non-zero decoder, b_dec, b_enc and (optionally) W_skip."""
    gen = torch.Generator().manual_seed(seed)
    dtype = model.W_E.dtype
    d = model.cfg.d_model
    out = TranscoderSet()
    for L in range(model.cfg.n_layers) if layers is None else layers:
        cfg = TranscoderConfig.for_model(
            model, L, n_latents, kind="skip_transcoder" if skip else "transcoder",
            activation=activation, k=k, jumprelu_init_threshold=0.05,
        )
        tc = Transcoder(cfg, dtype=dtype)
        with torch.no_grad():
            tc.W_enc.copy_(torch.randn(d, n_latents, generator=gen, dtype=dtype) / d**0.5)
            tc.b_enc.copy_(0.1 * torch.randn(n_latents, generator=gen, dtype=dtype))
            if activation != "topk":  # keep ReLU / JumpReLU sparse (~15% active)
                tc.b_enc -= 1.0
            tc.W_dec.copy_(0.3 * torch.randn(n_latents, d, generator=gen, dtype=dtype))
            tc.b_dec.copy_(0.1 * torch.randn(d, generator=gen, dtype=dtype))
            if tc.W_skip is not None:
                tc.W_skip.copy_(0.1 * torch.randn(d, d, generator=gen, dtype=dtype))
        out[L] = tc
    return out


class HookedFrozen:
    """The frozen model built from TransformerLens hooks on the real model."""

    def __init__(self, model, transcoders, tokens):
        self.model, self.tcs = model, transcoders
        self.tokens = tokens
        nL = model.cfg.n_layers
        with torch.no_grad():
            self.real_logits, cache = model.run_with_cache(tokens[None])
        self.cache = {k: v.detach() for k, v in cache.items()}
        self.latents, self.errors, self.pre = {}, {}, {}
        for L in range(nL):
            x = self.cache[f"blocks.{L}.ln2.hook_normalized"][0]
            y = self.cache[f"blocks.{L}.hook_mlp_out"][0]
            if L in transcoders:
                o = transcoders[L](x)
                self.latents[L] = o.latents.detach()
                self.pre[L] = o.pre_acts.detach()
                self.errors[L] = (y - o.output).detach()
            else:
                self.errors[L] = y

    def run(self, *, latents=None, errors=None, embed_scale=None, pos_scale=None, grad=False):
        """Frozen forward; returns (logits [P, vocab], {L: pre-acts [P, n]}, captured dict)."""
        latents = self.latents if latents is None else latents
        errors = self.errors if errors is None else errors
        captured: dict = {}
        hooks = []

        def const(name):
            value = self.cache[name]
            return lambda x, hook: value

        for name in self.cache:
            if name.endswith("hook_scale") or name.endswith("hook_pattern"):
                hooks.append((name, const(name)))

        def embed_hook(x, hook):
            if embed_scale is not None:
                x = x * embed_scale[None, :, None]
            if grad:
                x = x.detach().requires_grad_(True)
                captured["embed"] = x
            return x

        def pos_hook(x, hook):
            if pos_scale is not None:
                x = x * pos_scale[None, :, None]
            if grad:
                x = x.detach().requires_grad_(True)
                captured["pos"] = x
            return x

        hooks += [("hook_embed", embed_hook)]
        if "hook_pos_embed" in self.model.hook_dict and self.model.cfg.positional_embedding_type == "standard":
            hooks.append(("hook_pos_embed", pos_hook))
        for L in range(self.model.cfg.n_layers):

            def cap(x, hook, L=L):
                captured[f"mlp_in{L}"] = x
                return x

            def mlp_out(x, hook, L=L):
                base = errors[L][None].clone()
                tc = self.tcs.get(L)
                if tc is not None:
                    base = base + latents[L] @ tc.W_dec + tc.b_dec
                if grad:  # a leaf: its gradient is the gradient at mlp_out
                    base = base.detach().requires_grad_(True)
                    captured[f"mlp_out{L}"] = base
                if tc is not None:
                    return base + tc.skip_out(captured[f"mlp_in{L}"])
                return base

            hooks += [(f"blocks.{L}.ln2.hook_normalized", cap), (f"blocks.{L}.hook_mlp_out", mlp_out)]
        ctx = torch.enable_grad() if grad else torch.no_grad()
        pre_cap: list = []  # the unembedding's output: the logits before any soft-cap
        handle = self.model.unembed.register_forward_hook(lambda mod, inp, out: pre_cap.append(out))
        try:
            with ctx:
                self.model.run_with_hooks(self.tokens[None], fwd_hooks=hooks)
        finally:
            handle.remove()
        with ctx:
            logits = pre_cap[0][0]
            pre = {
                L: captured[f"mlp_in{L}"][0] @ tc.W_enc + tc.b_enc for L, tc in self.tcs.items()
            }
        return logits, pre, captured


def row_values(graph, targets, logits, pre):
    """Value of each expanded node in a frozen run: {node index: value}."""
    out = {}
    tgt_idx = graph.target_indices.tolist()
    for i in torch.nonzero(graph.nodes.expanded).flatten().tolist():
        if graph.node_type(i) == "feature":
            L, p, lat = (int(graph.nodes.layer[i]), int(graph.nodes.pos[i]), int(graph.nodes.latent[i]))
            out[i] = pre[L][p, lat]
        else:
            t = targets[tgt_idx.index(i)]
            out[i] = t.direction.to(logits.dtype) @ logits[int(graph.nodes.pos[i])]
    return out


def check_edges_by_intervention(graph, model, tcs, toks, targets, *, n_features: int = 40,
                                atol: float = 1e-9, rtol: float = 1e-7) -> int:
    """Every edge into the expanded rows == minus the change when its source is removed.

    Sources: a random sample of ``n_features`` features, every error / mlp_const, embedding
    and position node, and the constant node (every source removed at once). Row sums equal
    the frozen model's values. Returns the number of source nodes checked.
    """
    P = int(toks.shape[0])
    A = graph.adjacency().to_dense().double()
    ref = HookedFrozen(model, tcs, toks)
    base = row_values(graph, targets, *ref.run()[:2])
    rows = sorted(base)
    base_v = torch.stack([base[i] for i in rows]).double()
    torch.testing.assert_close(base_v, graph.nodes.value[rows].double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(A[rows].sum(1), base_v, atol=1e-7, rtol=1e-7)

    def check(col, **kw):
        new = row_values(graph, targets, *ref.run(**kw)[:2])
        delta = torch.stack([new[i] for i in rows]).double() - base_v
        torch.testing.assert_close(delta, -A[rows, col], atol=atol, rtol=rtol)

    feats = graph.indices_of("feature")
    pick = torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))[:n_features]
    sample = set(feats[pick].tolist())
    n_checked = 0
    dt = next(model.parameters()).dtype
    for j in range(graph.n_nodes):
        kind = graph.node_type(j)
        if kind == "feature" and j not in sample:
            continue
        L, p = int(graph.nodes.layer[j]), int(graph.nodes.pos[j])
        if kind == "feature":
            lat = {k: v.clone() for k, v in ref.latents.items()}
            lat[L][p, int(graph.nodes.latent[j])] = 0.0
            check(j, latents=lat)
        elif kind in ("error", "mlp_const"):
            err = {k: v.clone() for k, v in ref.errors.items()}
            err[L][p] = 0.0
            check(j, errors=err)
        elif kind in ("embedding", "position"):
            s = torch.ones(P, dtype=dt)
            s[p] = 0.0
            check(j, **({"embed_scale": s} if kind == "embedding" else {"pos_scale": s}))
        else:
            continue
        n_checked += 1
    zero_lat = {k: torch.zeros_like(v) for k, v in ref.latents.items()}
    zero_err = {k: torch.zeros_like(v) for k, v in ref.errors.items()}
    z = torch.zeros(P, dtype=dt)
    zv = row_values(graph, targets, *ref.run(latents=zero_lat, errors=zero_err, embed_scale=z, pos_scale=z)[:2])
    const = int(graph.indices_of("constant")[0])
    torch.testing.assert_close(torch.stack([zv[i] for i in rows]).double(), A[rows, const], atol=atol, rtol=rtol)
    return n_checked + 1
