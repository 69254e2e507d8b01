"""The one place that knows which kind of TransformerLens model it is talking to (a facade).

Two backends, one interface for the engine, the trainer, splicing and the views:

* ``"hooked"``: ``transformer_lens.HookedTransformer`` (TransformerLens 2.16 - 3.x; removed in 4.0).
* ``"bridge"``: ``transformer_lens.model_bridge.TransformerBridge`` (TransformerLens 3.x and 4.x),
  which wraps a Hugging Face model directly, with or without ``enable_compatibility_mode()``
  (HookedTransformer-style weight processing and legacy hook aliases).

Hook *names* per backend are built in :mod:`tc_circuits.models.sites` (``Site.hook_for(model)``,
``global_hook(name, model)``); this module gives everything else a caller needs from a model:

* the backend and the TransformerLens version (:func:`backend_of`, :func:`tl_version`);
* weights: norms (:func:`norm_weights`, with their kind read off the module, not its class
  name), attention OV (:func:`attn_ov`), MLP (:func:`mlp_weights`), embeddings and unembedding
  (:func:`embed_weights`, :func:`unembed_weights`), the matrices writing to the residual
  stream (:func:`writing_weights`);
* the weight-processing state: :func:`fold_ln` (HookedTransformer records it on its config;
  a bridge records nothing in TL 3 and only "processed or not" in TL 4, so we record the flags
  we applied in :func:`process_bridge` and otherwise read them off the norms);
* the model's name as checkpoints record it (:func:`model_name`), its device, its tokenizer;
* hook bookkeeping that aliases would double-count (:func:`hook_points`, :func:`count_hooks`),
  and whether norm-scale hooks can be written (:func:`norm_scale_hooks_live`: not on TL 3's
  bridge for RMSNorm models);
* loading: :func:`load_bridge` boots a bridge offline from a local HF folder or an in-memory
  HF model; :func:`hooked_transformer_class` imports ``HookedTransformer`` with a clear error
  on TL 4.

The pieces live in :mod:`~tc_circuits.models.backend_kind` (kind, names, devices, tokens),
:mod:`~tc_circuits.models.weights` (weights, processing state) and
:mod:`~tc_circuits.models.bridge_loading` (booting and processing a bridge); hook bookkeeping
is here. Nothing here imports ``HookedTransformer`` at module level, so the package imports on TL 4.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from tc_circuits.models.backend_kind import (
    BACKENDS,
    backend_of,
    device,
    hooked_transformer_class,
    is_bridge,
    model_name,
    tl_major,
    tl_version,
    to_tokens,
    tokenizer,
)
from tc_circuits.models.bridge_loading import load_bridge, process_bridge
from tc_circuits.models.weights import (
    AttnOV,
    MLPWeights,
    NormWeights,
    attn_ov,
    embed_weights,
    fold_ln,
    mlp_weights,
    norm_kind,
    norm_weights,
    recorded_processing,
    unembed_weights,
    writing_weights,
)

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.hook_points import HookPoint


def hook_points(model: Any) -> dict[int, HookPoint]:
    """Every distinct hook point of ``model`` (a bridge lists each under its alias names too)."""
    return {id(hp): hp for hp in model.hook_dict.values()}


def count_hooks(model: Any) -> int:
    """Number of forward hooks currently on ``model`` (0 on a clean model), aliases counted once."""
    return sum(len(hp.fwd_hooks) for hp in hook_points(model).values())


@torch.no_grad()
def norm_scale_hooks_live(model: Any) -> bool:
    """Whether writing a norm's ``hook_scale`` changes the forward pass (needed to freeze it).

    Always on a HookedTransformer. A TL 3.x bridge runs Hugging Face's own norm for RMSNorm
    models (``use_native_layernorm_autograd``) and only *reports* the scale; TL 4 recomputes
    from the hook. Found out once per model with a one-token forward pass.
    """
    if not is_bridge(model):
        return True
    cached = getattr(model, "_tc_norm_hooks_live", None)
    if cached is not None:
        return cached
    name = "blocks.0.ln1.hook_scale"
    if name not in model.hook_dict or model.cfg.normalization_type is None:
        live = True
    else:
        toks = torch.zeros(1, 1, dtype=torch.long, device=device(model))
        base = model(toks)
        live = not torch.equal(base, model.run_with_hooks(toks, fwd_hooks=[(name, lambda x, hook: 2 * x)]))
    object.__setattr__(model, "_tc_norm_hooks_live", live)
    return live


__all__ = [
    "BACKENDS",
    "AttnOV",
    "MLPWeights",
    "NormWeights",
    "attn_ov",
    "backend_of",
    "count_hooks",
    "device",
    "embed_weights",
    "fold_ln",
    "hook_points",
    "hooked_transformer_class",
    "is_bridge",
    "load_bridge",
    "mlp_weights",
    "model_name",
    "norm_kind",
    "norm_scale_hooks_live",
    "norm_weights",
    "process_bridge",
    "recorded_processing",
    "tl_major",
    "tl_version",
    "to_tokens",
    "tokenizer",
    "unembed_weights",
    "writing_weights",
]
