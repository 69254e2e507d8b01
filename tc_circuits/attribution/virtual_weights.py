"""Input-invariant analyses of transcoder features (Dunefsky et al. 2024).

These read weights only, no prompt:

* :func:`virtual_weights` -- feature -> feature on the direct residual path,
  ``W_dec[s] . W_enc[:, t]``;
* :func:`ov_virtual_weights` -- feature -> feature through one attention head's OV circuit,
  ``W_dec[s] . diag(ln1.w) W_V[h] W_O[h] (. diag(ln1_post.w)) . W_enc[:, t]`` (grouped-query
  ``W_V`` expanded per query head; Gemma's attention post-norm gain included);
* :func:`de_embeddings` -- which tokens a feature reads directly, ``W_E . W_enc[:, t]``
  (the direct path from the token embedding, ignoring attention and position embeddings);
* :func:`logit_effects` -- which tokens a feature promotes / suppresses directly,
  ``W_dec[s] . diag(ln_final.w) W_U``; :func:`top_tokens` lists the extremes.

Conventions: LayerNorm *scales* depend on the input and are ignored (they only rescale a
row); LN weights ``w`` are included where a path goes through the affine part (attention
input, unembedding); the transcoder reads ``ln2.hook_normalized``, before ``ln2.w``. With
``center=True`` vectors written into the residual stream are mean-centred over d_model,
as LayerNorm does (a no-op for models processed with ``center_writing_weights``). Multiply by
an input's actual activation to get the prompt-specific edge of the direct path.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tc_circuits.coders.transcoder import Transcoder
from tc_circuits.models import backend
from tc_circuits.models.block_plan import block_plan


def _rows(W: Tensor, idx: Tensor | list[int] | None) -> Tensor:
    return W if idx is None else W[torch.as_tensor(idx, dtype=torch.long)]


def _center(x: Tensor, center: bool) -> Tensor:
    return x - x.mean(-1, keepdim=True) if center else x


def _ln_w(ln) -> Tensor | None:
    w = getattr(ln, "w", None)
    return None if w is None else w.detach()


def virtual_weights(
    src: Transcoder,
    dst: Transcoder,
    src_latents: Tensor | list[int] | None = None,
    dst_latents: Tensor | list[int] | None = None,
    *,
    center: bool = False,
) -> Float[Tensor, "n_src n_dst"]:
    """Direct-path virtual weights ``W_dec[s] . W_enc[:, t]``."""
    if src.cfg.d_out != dst.cfg.d_in:
        raise ValueError(f"src d_out={src.cfg.d_out} != dst d_in={dst.cfg.d_in}")
    dec = _center(_rows(src.W_dec.detach(), src_latents), center)
    enc = _rows(dst.W_enc.detach().T, dst_latents)
    return dec @ enc.T


def ov_virtual_weights(
    model,
    src: Transcoder,
    dst: Transcoder,
    layer: int,
    head: int,
    src_latents: Tensor | list[int] | None = None,
    dst_latents: Tensor | list[int] | None = None,
    *,
    center: bool = False,
) -> Float[Tensor, "n_src n_dst"]:
    """Virtual weights through head ``head`` of attention layer ``layer``'s OV circuit."""
    if not 0 <= layer < model.cfg.n_layers or not 0 <= head < model.cfg.n_heads:
        raise ValueError(f"no head {layer}.{head} in this model")
    plan = block_plan(model)
    # parallel blocks: layer L's MLP reads the block input, so head L feeds MLPs after L only
    last = dst.cfg.layer - 1 if plan.parallel else dst.cfg.layer
    if not src.cfg.layer < layer <= last:
        raise ValueError(
            f"head layer {layer} must lie after the source layer {src.cfg.layer} and "
            f"{'before' if plan.parallel else 'at or before'} the target layer {dst.cfg.layer}"
            + (" (attention and MLP run in parallel in this model)" if plan.parallel else "")
        )
    dec = _center(_rows(src.W_dec.detach(), src_latents), center)
    w = _ln_w(model.blocks[layer].ln1)
    if w is not None:
        dec = dec * w
    # grouped-query attention: W_V is read expanded, head h uses K/V group h // (n_heads / n_kv)
    W = backend.attn_ov(model, layer)  # either backend, K/V heads expanded
    ov = W.W_V[head] @ W.W_O[head]
    out = dec @ ov
    if plan.ln1_post[layer] is not None:  # Gemma's attention post-norm: its gain (scale ignored)
        w_post = _ln_w(model.blocks[layer].ln1_post)
        if w_post is not None:
            out = out * w_post
    enc = _rows(dst.W_enc.detach().T, dst_latents)
    return _center(out, center) @ enc.T


def de_embeddings(
    model, tc: Transcoder, latents: Tensor | list[int] | None = None, *, center: bool = False
) -> Float[Tensor, "n d_vocab"]:
    """``W_E . W_enc[:, t]``: how strongly each token's embedding drives each latent directly."""
    W_E = _center(model.W_E.detach(), center)
    enc = _rows(tc.W_enc.detach().T, latents)
    return enc @ W_E.T


def logit_effects(
    model, tc: Transcoder, latents: Tensor | list[int] | None = None, *, center: bool = False
) -> Float[Tensor, "n d_vocab"]:
    """``W_dec[s] . diag(ln_final.w) W_U``: direct effect of a unit activation on each logit."""
    dec = _center(_rows(tc.W_dec.detach(), latents), center)
    w = _ln_w(model.ln_final)
    if w is not None:
        dec = dec * w
    return dec @ model.W_U.detach()


class TopTokens(NamedTuple):
    """Most positive and most negative entries of a vector over the vocabulary."""

    promoted_ids: Int[Tensor, " k"]
    promoted_values: Float[Tensor, " k"]
    suppressed_ids: Int[Tensor, " k"]
    suppressed_values: Float[Tensor, " k"]
    promoted: list[str]
    suppressed: list[str]


def top_tokens(values: Tensor, k: int = 10, tokenizer=None) -> TopTokens:
    """The ``k`` largest and ``k`` smallest entries of ``values`` (with decoded strings)."""
    if values.ndim != 1:
        raise ValueError(f"expected a vector over the vocabulary, got shape {tuple(values.shape)}")
    k = min(k, values.shape[0])
    hi = values.topk(k)
    lo = (-values).topk(k)
    dec = (lambda i: tokenizer.decode([i])) if tokenizer is not None else str
    return TopTokens(
        hi.indices, hi.values, lo.indices, -lo.values,
        [dec(int(i)) for i in hi.indices], [dec(int(i)) for i in lo.indices],
    )
