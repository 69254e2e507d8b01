"""Input-invariant views of one transcoder latent, read off the weights (no corpus needed).

All three go through the *direct* residual path only (attention and other MLPs ignored), the
usual convention for feature dashboards (Dunefsky et al. 2024):

* **promoted / suppressed tokens** (direct logit effect): ``LN_f(W_dec[latent]) @ W_U``. The
  final LayerNorm is linear up to its per-position scale ``s > 0``: it centres the vector
  over ``d_model`` and (when not folded, ``fold_ln=False``) multiplies by ``ln_final.w``. We
  apply the centring and ``w``; the positive scalar ``1/s`` does not change the ranking, so
  the scores are logit changes per unit activation *up to that scale*. With ``fold_ln`` and
  ``center_writing_weights`` the centring is a no-op and the score is exactly
  ``W_dec[latent] @ W_U``.
* **de-embeddings**: ``LN_2(W_E) @ W_enc[:, latent]``: which input tokens, written straight
  into the residual stream, most excite the latent (``ln2`` centring and ``w`` applied, scale
  dropped as above). Only meaningful for transcoders reading ``mlp_in``; for other input
  sites the raw ``W_E @ W_enc`` is used.
* **connections**: ``LN_2(W_dec_s[s]) @ W_enc_t[:, t]`` for a source latent ``s`` in an earlier
  layer and a target latent ``t`` in a later one: the virtual weight through the residual
  stream, the input-invariant part of an attribution edge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from tc_circuits.models import backend

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

    from tc_circuits.coders.transcoder import Transcoder


class TokenScore(NamedTuple):
    """A vocabulary token and its score."""

    token_id: int
    """Token id."""
    string: str
    """Decoded token (the id as a string when the model has no tokenizer)."""
    score: float
    """The score (direct logit effect, de-embedding value, ...)."""


class Connection(NamedTuple):
    """An input-invariant virtual weight to or from another layer's latent."""

    layer: int
    """Layer of the other latent."""
    latent: int
    """Index of the other latent."""
    weight: float
    """``LN(W_dec[source]) @ W_enc[:, target]``."""


def decode_token(model: HookedTransformer, token_id: int) -> str:
    """The string of one token, or its id as a string without a tokenizer (as the engine does)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return str(int(token_id))
    return tok.decode([int(token_id)])


def _ln_linear(ln_module, x: Tensor) -> Tensor:
    """The linear part of a (frozen-scale) LayerNorm: centre over the last dim, times ``w``."""
    if backend.norm_kind(ln_module) == "LN":  # a HookedTransformer or a bridge norm
        x = x - x.mean(-1, keepdim=True)
    w = getattr(ln_module, "w", None)
    if isinstance(w, Tensor):
        x = x * w.detach()
    return x


def reader_weights(model: HookedTransformer, tc: Transcoder) -> Float[Tensor, "d_model n_latents"]:
    """``W_enc`` as seen from the residual stream (``ln2`` linear part folded in for ``mlp_in``)."""
    W_enc = tc.W_enc.detach().float()
    site = tc.cfg.in_site
    if site.kind != "mlp_in":
        return W_enc
    ln = model.blocks[site.layer].ln2
    # (P diag(w)) is symmetric-in-use: x @ P @ diag(w) @ W_enc == ln(x) @ W_enc.
    eye = torch.eye(W_enc.shape[0], dtype=W_enc.dtype, device=W_enc.device)
    return _ln_linear(ln, eye).float() @ W_enc


def direct_logit_effects(
    model: HookedTransformer, tc: Transcoder, latents: Tensor | list[int]
) -> Float[Tensor, "k d_vocab"]:
    """Direct logit effect ``LN_final(W_dec[latent]) @ W_U`` of each latent (see module doc)."""
    idx = torch.as_tensor(latents, dtype=torch.long)
    W_dec = tc.W_dec.detach().float()[idx]
    return _ln_linear(model.ln_final, W_dec).float() @ model.W_U.detach().float()


def top_tokens(
    model: HookedTransformer, scores: Float[Tensor, " d_vocab"], k: int, *, largest: bool = True
) -> list[TokenScore]:
    """The ``k`` highest (or lowest) scoring tokens."""
    k = min(k, int(scores.shape[0]))
    vals, idx = torch.topk(scores.float(), k, largest=largest)
    return [TokenScore(int(i), decode_token(model, int(i)), float(v)) for v, i in zip(vals, idx)]


def promoted_tokens(
    model: HookedTransformer, tc: Transcoder, latent: int, k: int = 10
) -> tuple[list[TokenScore], list[TokenScore]]:
    """``(promoted, suppressed)``: top / bottom ``k`` tokens of the direct logit effect."""
    eff = direct_logit_effects(model, tc, [latent])[0]
    return top_tokens(model, eff, k), top_tokens(model, eff, k, largest=False)


def de_embeddings(
    model: HookedTransformer, tc: Transcoder, latent: int, k: int = 10
) -> list[TokenScore]:
    """Top ``k`` input tokens by ``LN_2(W_E) @ W_enc[:, latent]`` (see module doc)."""
    W_E = model.W_E.detach().float()
    if tc.cfg.in_site.kind == "mlp_in":
        W_E = _ln_linear(model.blocks[tc.cfg.in_site.layer].ln2, W_E).float()
    scores = W_E @ tc.W_enc.detach().float()[:, latent]
    return top_tokens(model, scores, k)


def connections(
    model: HookedTransformer,
    transcoders: dict[int, Transcoder],
    layer: int,
    latent: int,
    k: int = 5,
) -> tuple[list[Connection], list[Connection]]:
    """``(upstream, downstream)``: strongest virtual weights by ``|weight|``, per other layer.

    Upstream: latents ``s`` of earlier layers with ``LN_2(W_dec[s]) @ W_enc[:, latent]``;
    downstream: latents ``t`` of later layers with ``LN_2(W_dec[latent]) @ W_enc_t[:, t]``.
    Each list holds up to ``k`` entries per other layer, sorted by ``|weight|``.
    """
    if layer not in transcoders:
        raise ValueError(f"no transcoder for layer {layer}; have {sorted(transcoders)}")
    tc = transcoders[layer]
    read = reader_weights(model, tc)[:, latent]
    write = tc.W_dec.detach().float()[latent]
    up: list[Connection] = []
    down: list[Connection] = []
    for other, otc in sorted(transcoders.items()):
        if other < layer:
            w = otc.W_dec.detach().float() @ read
            up.extend(_strongest(other, w, k))
        elif other > layer:
            w = write @ reader_weights(model, otc)
            down.extend(_strongest(other, w, k))
    return up, down


def _strongest(layer: int, w: Tensor, k: int) -> list[Connection]:
    k = min(k, int(w.shape[0]))
    idx = torch.topk(w.abs(), k).indices
    return [Connection(layer, int(i), float(w[i])) for i in idx]
