"""EleutherAI sparsify checkpoints: one folder per hookpoint with ``cfg.json`` + ``sae.safetensors``.

Layout (``SparseCoder.save_to_disk``)::

    cfg.json         d_in, num_latents (0: d_in * expansion_factor), k, activation (topk),
                     transcode, skip_connection, normalize_decoder, ...
    sae.safetensors  encoder.weight [n, d_in], encoder.bias [n], W_dec [n, d_in], b_dec [d_in],
                     W_skip [d_in, d_in] optional

    encode: x' = x if transcode else x - b_dec;  pre = relu(x' @ encoder.weight.T + encoder.bias)
            top-k of pre
    decode: acts @ W_dec + b_dec (+ x @ W_skip.T)

sparsify hooks **Hugging Face modules**, so the activations differ from TransformerLens':

* ``h.L.mlp`` (a transcoder) reads the MLP input ``ln_2(x) = n(x) * w + b`` with GPT-2's LN gain
  ``w`` and bias ``b``; TransformerLens' ``blocks.L.ln2.hook_normalized`` is ``n(x)`` (with
  ``fold_ln`` gain and bias are folded into ``W_in``; without, they act after the hook). Exactly: ``W_enc' = diag(w) W_enc``,
  ``b_enc' = b_enc + b @ W_enc``, ``W_skip' = diag(w) W_skip``, ``b_dec' = b_dec + b @ W_skip``.
  This needs the HF model's ``h.L.ln_2`` weights (``hf_model=``).
* its output is the HF MLP output; with ``center_writing_weights`` TransformerLens'
  ``hook_mlp_out`` is that minus its mean over d_model, so the decoder side is centred:
  ``W_dec' = W_dec P``, ``b_dec' = b_dec P``, ``W_skip' = W_skip P`` with ``P = I - 11^T/d``.
* SAEs on ``h.L`` (residual) or ``h.L.mlp`` (MLP output) read an uncentred HF activation that a
  centred TransformerLens model does not contain: they are refused unless
  ``center_writing_weights=False``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from tc_circuits.validate import read_checkpoint_config, strict_bool, strict_int
from tc_circuits.formats._common import (
    build,
    check_shape,
    finite_or_raise,
    fold_pre_encoder_bias,
    ln2_gain_bias,
    make_config,
    processing_from,
    require,
    tl_model_name,
)
from tc_circuits.formats.family_sites import check_family, check_width, hf_hook, output_site
from tc_circuits.models.norm_gains import WeightSource, module_family
from tc_circuits.models.sites import Site
from tc_circuits.coders.transcoder import Transcoder, TranscoderSet

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
_HOOKPOINT = re.compile(
    r"^(?:(?:model|transformer|gpt_neox)\.)?(?:h|layers)\.(\d+)(\.mlp|\.post_feedforward_layernorm)?$")


def parse_hookpoint(hookpoint: str) -> tuple[int, str]:
    """``"h.3.mlp"`` -> ``(3, "mlp")``, ``"transformer.h.3"`` -> ``(3, "resid")``,
    ``"layers.3.post_feedforward_layernorm"`` (Gemma: the MLP output after its post-norm,
    SAEs only) -> ``(3, "mlp_normed")``."""
    m = _HOOKPOINT.match(hookpoint)
    if not m:
        raise ValueError(
            f"sparsify hookpoint {hookpoint!r} cannot be mapped exactly to a TransformerLens site; "
            f"supported: 'h.L.mlp' / 'layers.L.mlp' (MLP), 'h.L' / 'layers.L' (block output) and, for "
            f"SAEs, Gemma's 'layers.L.post_feedforward_layernorm', optionally prefixed 'transformer.', "
            f"'model.' or 'gpt_neox.'"
        )
    where = {".mlp": "mlp", ".post_feedforward_layernorm": "mlp_normed"}.get(m.group(2) or "", "resid")
    return int(m.group(1)), where


def ln2_weights(hf_model: Any, layer: int) -> tuple[Tensor, Tensor]:
    """The MLP-input norm gain and bias of ``layer`` from the unprocessed weights (HF folder, model,
    ``fold_ln=False`` HookedTransformer or a state dict; see
    :func:`tc_circuits.formats._common.ln2_gain_bias`); the sparsify MLP input cannot be mapped
    to TransformerLens' ``ln2.hook_normalized`` without them."""
    return ln2_gain_bias(hf_model, layer)


def _read(root: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    raw, w_path = read_checkpoint_config(root, CFG_FILE, WEIGHTS_FILE, "sparsify")
    try:
        t = load_file(str(w_path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"corrupted or truncated safetensors file {w_path}: {err}") from err
    return raw, t


def load_sparsify(
    path: str | os.PathLike,
    *,
    hookpoint: str | None = None,
    hf_model: nn.Module | Mapping[str, Tensor] | str | os.PathLike | None = None,
    processing: Mapping[str, bool] | None = None,
    model_name: str | None = None,
    model: Any = None,
) -> Transcoder:
    """One sparsify hookpoint folder as a :class:`Transcoder` for a TransformerLens model.

    Hookpoints are Hugging Face module names: ``h.L.mlp`` (GPT-2), ``layers.L.mlp`` (Pythia /
    GPT-NeoX, Llama, Qwen, Mistral, Gemma; optionally prefixed ``model.`` / ``gpt_neox.``).
    A transcoder reads the MLP module's input, the MLP-input norm's output ``n(x) * g + b``
    (Pythia's parallel MLP: ``post_attention_layernorm`` of the block input; Gemma:
    ``pre_feedforward_layernorm``, ``g = 1 + w``), folded exactly from ``hf_model``. Its output
    is the MLP module's output; on Gemma that is before ``post_feedforward_layernorm`` and has
    no exact counterpart at ``hook_mlp_out``: refused.

    Args:
        path: the hookpoint folder (``.../h.3.mlp``).
        hookpoint: the HF module name (default: the folder name).
        hf_model: the Hugging Face model (or state dict) whose ``ln_2`` weights map an MLP
            transcoder's input (required for MLP transcoders).
        processing: weight processing of the target TransformerLens model
            (default: ``from_pretrained``'s: fold_ln, center_writing_weights, center_unembed).
        model_name: recorded in the config (checked against the model on load).
        model: the processed target model: the source family (``hf_model``'s) and ``d_in`` are
            checked against it, and its processing and name are used and recorded.
    """
    root = Path(path)
    source = str(root)
    raw, t = _read(root)
    hookpoint = hookpoint or root.name
    layer, where = parse_hookpoint(hookpoint)
    proc = processing_from(processing)
    family = module_family(model) if model is not None else None
    if hf_model is not None:
        hf_model = WeightSource(hf_model, name=f"{source}: hf_model")
        check_family(source, "hf_model", hf_model.name, hf_model.family, model)
        family = hf_model.family or family
    if model is not None:
        from tc_circuits.models.model_info import model_signature

        sig = model_signature(model)
        if "d_in" in raw:
            check_width(source, "d_in", strict_int(raw["d_in"], "d_in", source), model)
        proc, model_name = dict(sig["weight_processing"]), model_name or sig["model_name"]
    if where == "mlp":  # the MLP module's output: before Gemma's post-MLP norm
        output_site(source, hf_hook(hookpoint, io="output", family=family), family, model)
    if raw.get("activation", "topk") != "topk":
        raise ValueError(f"{source}: sparsify activation {raw['activation']!r} is not supported (only 'topk')")
    for flag in ("embed_skip", "gram_lookup"):
        if raw.get(flag):
            raise ValueError(f"{source}: {flag}=True needs inputs besides this hookpoint; not supported")
    transcode = strict_bool(raw.get("transcode", False), "transcode", source)
    require(source, t, "encoder.weight", "encoder.bias", "W_dec", "b_dec")
    finite_or_raise(source, t)
    if "d_in" not in raw:
        raise ValueError(f"{source}: cfg.json is missing field 'd_in' (an int)")
    d_in = strict_int(raw["d_in"], "d_in", source, minimum=1)
    n = strict_int(raw.get("num_latents") or 0, "num_latents", source) or d_in * strict_int(
        raw.get("expansion_factor", 32), "expansion_factor", source, minimum=1)
    check_shape(source, "encoder.weight", t["encoder.weight"], (n, d_in))
    check_shape(source, "encoder.bias", t["encoder.bias"], (n,))
    check_shape(source, "W_dec", t["W_dec"], (n, d_in))
    check_shape(source, "b_dec", t["b_dec"], (d_in,))
    skip = "W_skip" in t
    if skip:
        check_shape(source, "W_skip", t["W_skip"], (d_in, d_in))
    if strict_bool(raw.get("skip_connection", skip), "skip_connection", source) != skip:
        raise ValueError(f"{source}: cfg skip_connection={raw.get('skip_connection')} but W_skip present={skip}")
    dtype = t["encoder.weight"].dtype
    W_enc = t["encoder.weight"].double().T
    b_enc = t["encoder.bias"].double()
    W_dec, b_dec = t["W_dec"].double(), t["b_dec"].double()
    W_skip = t["W_skip"].double().T if skip else None
    if transcode and where == "mlp_normed":
        raise ValueError(
            f"{source}: a transcoder on {hookpoint!r} would map the norm's input to its output; only "
            f"SAEs on it (its output: our hook_mlp_out) are supported"
        )
    if transcode and where == "mlp":
        in_site, out_site = Site(layer, "mlp_in"), Site(layer, "mlp_out")
        if hf_model is None:
            raise ValueError(
                f"{source}: the transcoder reads HF's ln_2 output (with its gain and bias) while "
                f"TransformerLens' ln2.hook_normalized is the bare normalised vector (gain and bias "
                f"act after the hook, or are folded into W_in); pass hf_model= (the HF model or its "
                f"state dict) so the LayerNorm can be mapped exactly"
            )
        w, b = (x.double() for x in ln2_weights(hf_model, layer))
        if w.shape != (d_in,):
            raise ValueError(f"{source}: ln_2 weight has shape {tuple(w.shape)}, expected ({d_in},)")
        b_enc = b_enc + b @ W_enc
        W_enc = w[:, None] * W_enc
        if W_skip is not None:
            b_dec = b_dec + b @ W_skip
            W_skip = w[:, None] * W_skip
    elif transcode:
        raise ValueError(f"{source}: a transcoder on hookpoint {hookpoint!r} (not an MLP) cannot be mapped")
    else:
        kind = "mlp_out" if where in ("mlp", "mlp_normed") else "resid_post"
        in_site = out_site = Site(layer, kind)
        if proc["center_writing_weights"]:
            raise ValueError(
                f"{source}: an SAE on {hookpoint!r} reads the uncentred HF activation, which a "
                f"TransformerLens model with center_writing_weights=True does not have; load the "
                f"model with center_writing_weights=False"
            )
        b_enc = fold_pre_encoder_bias(W_enc, b_enc, b_dec)
    if proc["center_writing_weights"]:
        W_dec = W_dec - W_dec.mean(-1, keepdim=True)
        b_dec = b_dec - b_dec.mean()
        if W_skip is not None:
            W_skip = W_skip - W_skip.mean(-1, keepdim=True)
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if W_skip is not None:
        tensors["W_skip"] = W_skip
    tensors = {k: v.to(dtype).contiguous() for k, v in tensors.items()}
    cfg = make_config(
        d_in=d_in, d_out=d_in, n_latents=n,
        input_site=in_site.hook_name, output_site=out_site.hook_name,
        activation="topk", k=int(raw.get("k", 32)), skip=skip,
        model_name=model_name if model is not None else tl_model_name(model_name), weight_processing=proc,
        extra={"source_format": "sparsify", "hookpoint": hookpoint},
    )
    return build(cfg, tensors, source=source)


def load_sparsify_many(
    path: str | os.PathLike,
    *,
    hf_model: nn.Module | Mapping[str, Tensor] | str | os.PathLike | None = None,
    processing: Mapping[str, bool] | None = None,
    model_name: str | None = None,
    model: Any = None,
) -> TranscoderSet:
    """Every hookpoint folder under ``path`` (one per layer) as a :class:`TranscoderSet`
    (the keyword arguments as for :func:`load_sparsify`)."""
    root = Path(path)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / CFG_FILE).is_file())
    if not folders:
        raise FileNotFoundError(f"no sparsify hookpoint folders (with {CFG_FILE}) in {root}")
    out = TranscoderSet()
    for folder in folders:
        tc = load_sparsify(folder, hf_model=hf_model, processing=processing, model_name=model_name, model=model)
        if tc.cfg.layer in out:
            raise ValueError(f"{root}: two sparsify hookpoints map to layer {tc.cfg.layer}")
        out[tc.cfg.layer] = tc
    return out




def save_sparsify(
    transcoders: Transcoder | TranscoderSet | Mapping[int, Transcoder],
    path: str | os.PathLike,
    *,
    hf_model: nn.Module | Mapping[str, Tensor] | str | os.PathLike | None = None,
) -> Path:
    """Write TopK transcoders / SAEs as sparsify hookpoint folders (``h.L.mlp/`` or ``h.L/``)
    under ``path``, for ``SparseCoder.load_from_disk`` on the Hugging Face model.

    The inverse of :func:`load_sparsify`: an MLP transcoder's LayerNorm gain/bias are unfolded
    from the encoder and skip (``hf_model=`` gives them), so it reads HF's ``ln_2`` output. A
    decoder trained on a ``center_writing_weights`` model is written as is: sparsify's target,
    the uncentred MLP output, differs from it by its mean over d_model, which no LayerNorm
    downstream sees. sparsify has only TopK, so ReLU / JumpReLU raise; so do SAEs on centred
    activations (sparsify reads uncentred ones).
    """
    from safetensors.torch import save_file

    from tc_circuits.fileio import atomic_write
    from tc_circuits.formats._common import unfold_input_affine

    from tc_circuits.models.norm_gains import has_post_mlp_norm

    items = {transcoders.cfg.layer: transcoders} if isinstance(transcoders, Transcoder) else dict(transcoders)
    root = Path(path)
    if hf_model is not None:
        hf_model = WeightSource(hf_model, name="hf_model")
    family = hf_model.family if hf_model is not None else None
    # sparsify names modules relative to the base model: GPT-2 'h.L', the others 'layers.L'
    prefix = "h" if family in (None, "gpt2", "gptj") else "layers"
    for layer, tc in sorted(items.items()):
        c = tc.cfg
        if c.activation != "topk":
            raise ValueError(f"layer {layer}: sparsify has only TopK coders, not {c.activation!r}")
        if c.d_in != c.d_out:
            raise ValueError(f"layer {layer}: sparsify coders map d_in -> d_in; got {c.d_in} -> {c.d_out}")
        t = {name: p.detach().double() for name, p in tc.named_parameters()}
        if c.is_sae and not c.skip:
            if c.in_site.kind not in ("mlp_out", "resid_post"):
                raise ValueError(f"layer {layer}: no sparsify hookpoint reads {c.input_site}")
            if c.weight_processing.get("center_writing_weights", True):
                raise ValueError(
                    f"layer {layer}: this SAE reads a centred activation (center_writing_weights); "
                    f"sparsify reads the uncentred HF one, so it cannot be written exactly"
                )
            hookpoint = f"{prefix}.{layer}.mlp" if c.in_site.kind == "mlp_out" else f"{prefix}.{layer}"
            t["b_enc"] = t["b_enc"] + t["b_dec"] @ t["W_enc"]  # sparsify encodes x - b_dec
            transcode = False
        else:
            if (c.in_site.kind, c.out_site.kind) != ("mlp_in", "mlp_out") or c.in_site.layer != layer:
                raise ValueError(f"layer {layer}: sparsify transcoders map h.L.mlp's input to its output, "
                                 f"not {c.input_site} -> {c.output_site}")
            if hf_model is None:
                raise ValueError(
                    f"layer {layer}: sparsify's h.{layer}.mlp reads HF's ln_2 output n(x) * w + b; pass "
                    f"hf_model= (the HF model or its state dict) so w and b can be unfolded exactly"
                )
            if has_post_mlp_norm(family):
                raise ValueError(
                    f"layer {layer}: sparsify's layers.{layer}.mlp transcoders predict the MLP output "
                    f"before Gemma's post_feedforward_layernorm; ours write blocks.{layer}.hook_mlp_out, "
                    f"after it, which cannot be converted exactly"
                )
            w, b = ln2_weights(hf_model, layer)
            t = unfold_input_affine(t, w, b, source=f"layer {layer}")
            hookpoint, transcode = f"{prefix}.{layer}.mlp", True
        dtype = tc.W_enc.dtype
        tensors = {"encoder.weight": t["W_enc"].T, "encoder.bias": t["b_enc"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
        if "W_skip" in t:
            tensors["W_skip"] = t["W_skip"].T
        tensors = {k: v.to(dtype).contiguous() for k, v in tensors.items()}
        cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": False, "num_latents": c.n_latents,
               "k": int(c.k), "multi_topk": False, "skip_connection": "W_skip" in t, "transcode": transcode,
               "d_in": c.d_in}
        folder = root / hookpoint
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / WEIGHTS_FILE, lambda p, t=tensors: save_file(t, p))
        text = json.dumps(cfg, indent=2)
        atomic_write(folder / CFG_FILE, lambda p, s=text: Path(p).write_text(s))
    return root


__all__ = ["ln2_weights", "load_sparsify", "load_sparsify_many", "parse_hookpoint", "save_sparsify"]
