"""Helpers for the CLT tests: random CLTs and an independent hook-based frozen CLT model.

``HookedFrozenCLT`` writes the CLT's replacement model with TransformerLens hooks on the real
model, reading the raw parameters (``W_enc[L]``, ``W_dec[L][:, L' - L]``, ``b_dec``, ``W_skip``)
directly: it shares no code with ``coders.clt.decode_output`` or the engine.
"""

from __future__ import annotations

import torch

from tc_circuits.coders.clt import CLTConfig, CrossLayerTranscoder


def make_clt(model, *, activation="topk", skip=True, n_latents=48, k=4, seed=0) -> CrossLayerTranscoder:
    """A random CLT over every layer of ``model`` with non-zero decoders, biases and skip."""
    gen = torch.Generator().manual_seed(seed)
    dtype = model.W_E.dtype
    d = model.cfg.d_model
    cfg = CLTConfig.for_model(model, n_latents, skip=skip, activation=activation, k=k, jumprelu_init_threshold=0.05)
    clt = CrossLayerTranscoder(cfg, dtype=dtype)
    with torch.no_grad():
        clt.W_enc.copy_(torch.randn(clt.W_enc.shape, generator=gen, dtype=dtype) / d**0.5)
        clt.b_enc.copy_(0.1 * torch.randn(clt.b_enc.shape, generator=gen, dtype=dtype))
        if activation != "topk":
            clt.b_enc -= 1.0
        for W in clt.W_dec:
            W.copy_(0.3 * torch.randn(W.shape, generator=gen, dtype=dtype))
        clt.b_dec.copy_(0.1 * torch.randn(clt.b_dec.shape, generator=gen, dtype=dtype))
        if clt.W_skip is not None:
            clt.W_skip.copy_(0.1 * torch.randn(clt.W_skip.shape, generator=gen, dtype=dtype))
    return clt


def _act(clt, L, pre):
    c = clt.cfg
    if c.activation == "topk":
        v, i = pre.topk(c.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, i, v.relu())
    if c.activation == "relu":
        return pre.relu()
    return pre * (pre > clt.log_threshold[L].exp())


class HookedFrozenCLT:
    """The frozen replacement model of a CLT built from hooks on the real model."""

    def __init__(self, model, clt, tokens):
        self.model, self.clt, self.tokens = model, clt, tokens
        N = clt.cfg.n_layers
        with torch.no_grad():
            self.real_logits, cache = model.run_with_cache(tokens[None])
        self.cache = {k: v.detach() for k, v in cache.items()}
        xs = [self.cache[f"blocks.{L}.ln2.hook_normalized"][0] for L in range(N)]
        with torch.no_grad():
            self.latents = {L: _act(clt, L, xs[L] @ clt.W_enc[L] + clt.b_enc[L]) for L in range(N)}
            self.errors = {}
            for Lp in range(N):
                recon = clt.b_dec[Lp] + sum(self.latents[L] @ clt.W_dec[L][:, Lp - L] for L in range(Lp + 1))
                if clt.W_skip is not None:
                    recon = recon + xs[Lp] @ clt.W_skip[Lp]
                self.errors[Lp] = self.cache[f"blocks.{Lp}.hook_mlp_out"][0] - recon

    def run(self, *, latents=None, errors=None, embed_scale=None, pos_scale=None):
        """Frozen forward; returns (logits [P, vocab], {L: pre-acts [P, n]})."""
        clt = self.clt
        latents = self.latents if latents is None else latents
        errors = self.errors if errors is None else errors
        captured: dict = {}
        hooks = []
        for name, value in self.cache.items():
            if name.endswith("hook_scale") or name.endswith("hook_pattern"):
                hooks.append((name, lambda x, hook, v=value: v))
        if embed_scale is not None:
            hooks.append(("hook_embed", lambda x, hook: x * embed_scale[None, :, None]))
        if pos_scale is not None:
            hooks.append(("hook_pos_embed", lambda x, hook: x * pos_scale[None, :, None]))
        for Lp in range(clt.cfg.n_layers):

            def cap(x, hook, Lp=Lp):
                captured[Lp] = x[0]
                return x

            def out(x, hook, Lp=Lp):
                y = errors[Lp] + clt.b_dec[Lp] + sum(latents[L] @ clt.W_dec[L][:, Lp - L] for L in range(Lp + 1))
                if clt.W_skip is not None:
                    y = y + captured[Lp] @ clt.W_skip[Lp]
                return y[None]

            hooks += [(f"blocks.{Lp}.ln2.hook_normalized", cap), (f"blocks.{Lp}.hook_mlp_out", out)]
        with torch.no_grad():
            logits = self.model.run_with_hooks(self.tokens[None], fwd_hooks=hooks)[0]
            pre = {L: captured[L] @ clt.W_enc[L] + clt.b_enc[L] for L in range(clt.cfg.n_layers)}
        return logits, pre
