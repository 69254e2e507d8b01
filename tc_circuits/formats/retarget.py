"""Put a foreign checkpoint's tensors onto our sites of one processed target model, exactly.

Given the classified hooks (:mod:`tc_circuits.formats.family_sites`), the processing the file
was made under and (optionally) the target model:

1. the output site is checked (a pre-post-norm Gemma MLP output is refused);
2. an input read after the MLP-input norm's gain gets the gain (and LayerNorm bias) folded
   into the encoder, from the unprocessed weights (``hf_model=``);
3. with a target model, ``center_writing_weights`` is reconciled: a transcoder output
   (``hook_mlp_out``) read uncentred gets its decoder centred for a centred target
   (``W_dec P``, ``b_dec P``, ``W_skip P``, ``P = I - 11^T/d``: exact); any other difference
   on a site whose value centring changes (residual stream, attention / MLP outputs) is refused
   naming the site and the flag. ``ln2.hook_normalized`` does not depend on centring (a
   LayerNorm removes the mean; RMSNorm models are never centred by TransformerLens). The
   target's flags are recorded.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from tc_circuits.formats._common import center_output, fold_norm
from tc_circuits.formats.family_sites import ForeignHook, describe, output_site
from tc_circuits.models.sites import Site

#: site kinds whose value ``center_writing_weights`` changes
_CENTRED_KINDS = frozenset({"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in_resid"})


def _rms(model: Any) -> bool:
    return str(getattr(model.cfg, "normalization_type", "")).startswith("RMS")


def retarget(
    tensors: dict[str, Tensor],
    *,
    source: str,
    in_hook: ForeignHook,
    out_hook: ForeignHook,
    family: str | None,
    hf_model: Any,
    model: Any,
    processing: dict[str, bool],
    is_sae: bool = False,
) -> tuple[dict[str, Tensor], Site, Site, dict[str, bool]]:
    """``(tensors, input site, output site, processing to record)``; see the module docstring.

    ``tensors`` are float64 in our orientation; ``processing`` is the file's.
    """
    out_site = output_site(source, out_hook, family, model)
    if in_hook.norm_output:
        tensors = fold_norm(tensors, hf_model, in_hook.site.layer, tensors["W_enc"].shape[0],
                            source=source, hook=in_hook.name)
    if model is None:
        return tensors, in_hook.site, out_site, dict(processing)
    from tc_circuits.models.model_info import weight_processing

    target = weight_processing(model)
    rms = _rms(model)  # TransformerLens never centres an RMSNorm model, whatever the flag says

    def centred(flag: bool | None, hook: ForeignHook) -> bool:
        return bool(flag) and not hook.uncentred and not rms

    src_in = centred(processing.get("center_writing_weights", True), in_hook)
    src_out = centred(processing.get("center_writing_weights", True), out_hook)
    tgt = bool(target.get("center_writing_weights")) and not rms
    if in_hook.site.kind in _CENTRED_KINDS and src_in != tgt:
        raise ValueError(
            f"{source}: input site {in_hook.name!r} was read with center_writing_weights={src_in}, the "
            f"target model {describe(model)} has center_writing_weights={tgt}; the activation differs "
            f"by its mean over d_model, which cannot be folded into an encoder exactly. Load the model "
            f"with center_writing_weights={src_in}"
        )
    if out_site.kind in _CENTRED_KINDS and src_out != tgt:
        if out_site.kind == "mlp_out" and not src_out and not is_sae:
            tensors = center_output(tensors)
        else:
            raise ValueError(
                f"{source}: output site {out_hook.name!r} was read with center_writing_weights={src_out}, "
                f"the target model {describe(model)} has center_writing_weights={tgt}; load the model "
                f"with center_writing_weights={src_out}"
            )
    return tensors, in_hook.site, out_site, dict(target)


__all__ = ["retarget"]
