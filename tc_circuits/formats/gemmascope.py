"""GemmaScope transcoders, as Google publishes them, onto our processed Gemma model.

Two layouts (one folder per layer and width, e.g. ``layer_3/width_16k/average_l0_54/``):

* **GemmaScope** (Gemma-2, ``google/gemma-scope-2b-pt-transcoders``): ``params.npz`` with
  ``W_enc [d_model, n]``, ``W_dec [n, d_model]``, ``b_enc [n]``, ``b_dec [d_model]``,
  ``threshold [n]``; JumpReLU ``f = (z * (z > threshold)) @ W_dec + b_dec`` with
  ``z = x @ W_enc + b_enc``. circuit-tracer's Gemma config (``feature_input_hook:
  ln2.hook_normalized``, ``feature_output_hook: hook_mlp_out``) and SAELens'
  ``gemma_2_transcoder`` loader (``hook_name: blocks.L.ln2.hook_normalized``,
  ``hook_name_out: blocks.L.hook_mlp_out``, ``jumprelu_transcoder``) both run it there:
  ``x`` is the pre-MLP RMSNorm's normalised vector *before* its ``(1 + w)`` gain, the output
  is after the post-MLP norm. Those are exactly our sites, so the tensors map one to one.
  Google's model card says the same (the pre-MLP RMSNorm gain folded into the MLP input
  matrices, the transcoder trained just after the RMSNorm to reconstruct the value added to the
  residual stream).
* **GemmaScope 2** (Gemma-3, ``google/gemma-scope-2-*``): ``params.safetensors`` with
  ``w_enc [d, n]``, ``w_dec [n, d]``, ``b_enc``, ``b_dec``, ``threshold`` and, for the affine
  ("skip") transcoders, ``affine_skip_connection [d, d]`` (``x @ affine_skip_connection``, as
  circuit-tracer reads it; SAELens 6.54 transposes it, which differs unless it is
  symmetric), beside a ``config.json`` naming Hugging Face hook points
  (``hf_hook_point_in: model.layers.L.pre_feedforward_layernorm.output``, ``hf_hook_point_out:
  ...post_feedforward_layernorm.output``). That input *includes* the ``(1 + w)`` gain, so the
  gain, read from the unprocessed weights (``hf_model=``), is folded into the encoder:
  ``W_enc' = diag(1 + w) W_enc`` (and into the skip).

``input_hook=`` / ``output_hook=`` override what a file declares (a TransformerLens name
relative to ``blocks.L`` such as ``ln2.hook_normalized`` or circuit-tracer's ``mlp.hook_in``,
or a Hugging Face hook point). An output before the post-MLP norm (``mlp.hook_out``,
``model.layers.L.mlp`` output) is refused: see :mod:`tc_circuits.formats.family_sites`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tc_circuits.coders.transcoder import Transcoder, TranscoderSet
from tc_circuits.formats._common import (
    build,
    check_shape,
    finite_or_raise,
    fold_norm,
    make_config,
    require,
    threshold_to_log,
)
from tc_circuits.formats.family_sites import (
    ForeignHook,
    check_family,
    check_width,
    family_of_name,
    hf_hook,
    output_site,
    tl_hook,
)
from tc_circuits.models.norm_gains import WeightSource

PARAM_FILES = ("params.npz", "params.safetensors")
#: Gemma-2 (``params.npz``): the sites circuit-tracer's and SAELens' configs name.
GEMMASCOPE_HOOKS = ("ln2.hook_normalized", "hook_mlp_out")
#: Gemma-3 (``params.safetensors``) without a config.json: SAELens' inferred hook points.
GEMMASCOPE2_HOOKS = ("model.layers.{L}.pre_feedforward_layernorm.output",
                     "model.layers.{L}.post_feedforward_layernorm.output")


def params_file(path: str | os.PathLike) -> Path:
    """The ``params.npz`` / ``params.safetensors`` at ``path`` (the file, or its folder)."""
    p = Path(path)
    if p.is_file():
        return p
    for name in PARAM_FILES:
        if (p / name).is_file():
            return p / name
    raise FileNotFoundError(f"no GemmaScope {' or '.join(PARAM_FILES)} in {p}")


def read_params(file: str | os.PathLike) -> dict[str, Tensor]:
    """A GemmaScope parameter file in our orientation: ``W_enc [d_in, n]``, ``W_dec [n, d_out]``,
    ``b_enc``, ``b_dec``, ``threshold`` and optionally ``W_skip [d_in, d_out]``."""
    file = Path(file)
    source = str(file)
    try:
        if file.suffix == ".npz":
            import numpy as np

            with np.load(file, allow_pickle=False) as z:
                raw = {k: torch.from_numpy(z[k].copy()) for k in z.files}
        else:
            from safetensors.torch import load_file

            raw = load_file(str(file))
    except Exception as err:  # numpy raises several types for a corrupted archive
        raise ValueError(f"corrupted or unreadable GemmaScope file {file}: {err}") from err
    names = {"w_enc": "W_enc", "w_dec": "W_dec", "affine_skip_connection": "W_skip"}
    t = {names.get(k, k): v for k, v in raw.items()}
    require(source, t, "W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    finite_or_raise(source, t)
    d_in, n = t["W_enc"].shape
    d_out = t["b_dec"].shape[0]
    check_shape(source, "W_dec", t["W_dec"], (n, d_out))
    check_shape(source, "b_enc", t["b_enc"], (n,))
    check_shape(source, "threshold", t["threshold"], (n,))
    if "W_skip" in t:
        check_shape(source, "affine_skip_connection", t["W_skip"], (d_in, d_out))
    keep = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold", "W_skip")
    return {k: t[k] for k in keep if k in t}


def _layer(path: Path, layer: int | None) -> int:
    found = [int(m) for m in re.findall(r"layer_(\d+)", str(path))]
    if layer is None:
        if not found:
            raise ValueError(f"{path}: no layer_N in the path; pass layer=")
        return found[-1]
    if found and found[-1] != layer:
        raise ValueError(f"{path}: the path names layer {found[-1]}, but layer={layer} was given")
    return layer


def _classify(hook: str, layer: int, family: str | None) -> ForeignHook:
    """A TransformerLens-relative name (``ln2.hook_normalized``, ``mlp.hook_in``) or an HF hook point."""
    if re.search(r"(?:^|\.)(?:h|layers)\.\d+\.", hook):
        return hf_hook(hook, family=family)
    return tl_hook(hook, layer, fold_ln=False)


def load_gemmascope(
    path: str | os.PathLike,
    *,
    layer: int | None = None,
    hf_model: Any = None,
    model: Any = None,
    input_hook: str | None = None,
    output_hook: str | None = None,
    model_name: str | None = None,
) -> Transcoder:
    """One GemmaScope transcoder (``params.npz``, or ``params.safetensors`` + ``config.json``).

    Args:
        path: the parameter file or its folder (``.../layer_3/width_16k/average_l0_54``).
        layer: the layer (default: the last ``layer_N`` in the path).
        hf_model: the unprocessed weights (Hugging Face folder or model, ``HookedTransformer``
            with ``fold_ln=False``, or a state dict); needed when the input hook includes the
            pre-MLP norm's gain (GemmaScope 2), and checked for its family.
        model: the processed target model: its family, d_model and processing are checked and
            recorded (and its name).
        input_hook, output_hook: override the file's declared hook points.
        model_name: recorded model name (default: the target model's, else the config's).
    """
    file = params_file(path)
    source = str(file)
    layer = _layer(file, layer)
    t = read_params(file)
    cfg_file = file.parent / "config.json"
    meta: dict[str, Any] = {}
    if file.suffix != ".npz" and cfg_file.is_file():
        try:
            meta = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"corrupted {cfg_file}: {err}") from err
        if meta.get("architecture", "jump_relu") != "jump_relu":
            raise ValueError(f"{cfg_file}: architecture {meta['architecture']!r} is not a JumpReLU transcoder")
    declared = meta.get("model_name") or model_name
    # without a model name the layout says it: params.npz is GemmaScope (Gemma-2), else GemmaScope 2
    layout = "GemmaScope (Gemma-2) params.npz" if file.suffix == ".npz" else "GemmaScope 2 params.safetensors"
    family = family_of_name(declared) or ("gemma2" if file.suffix == ".npz" else "gemma3")
    field = "model_name" if declared else "layout"
    check_family(source, field, declared or layout, family, model)
    if hf_model is not None:
        ws = WeightSource(hf_model, name=f"{source}: hf_model")
        check_family(source, "hf_model", ws.name, ws.family, model)
        hf_model = ws
    if file.suffix == ".npz":
        default_in, default_out = GEMMASCOPE_HOOKS
    else:
        default_in = meta.get("hf_hook_point_in") or GEMMASCOPE2_HOOKS[0].format(L=layer)
        default_out = meta.get("hf_hook_point_out") or GEMMASCOPE2_HOOKS[1].format(L=layer)
    h_in = _classify(input_hook or default_in, layer, family)
    h_out = _classify(output_hook or default_out, layer, family)
    if (h_in.site.kind, h_in.site.layer) != ("mlp_in", layer):
        raise ValueError(f"{source}: input hook {h_in.name!r} is not layer {layer}'s MLP input")
    out_site = output_site(source, h_out, family, model)
    if (out_site.kind, out_site.layer) != ("mlp_out", layer):
        raise ValueError(f"{source}: output hook {h_out.name!r} is not layer {layer}'s MLP output")
    d_in, n = t["W_enc"].shape
    d_out = t["b_dec"].shape[0]
    check_width(source, "d_in (W_enc rows)", d_in, model)
    dtype = t["W_enc"].dtype
    tensors = {k: t[k].double() for k in ("W_enc", "b_enc", "W_dec", "b_dec", "W_skip") if k in t}
    if h_in.norm_output:
        tensors = fold_norm(tensors, hf_model, layer, d_in, source=source, hook=h_in.name)
    tensors = {k: v.to(dtype).contiguous() for k, v in tensors.items()}
    tensors["log_threshold"] = threshold_to_log(source, t["threshold"].to(dtype))
    if model is not None:
        from tc_circuits.models.model_info import model_signature

        sig = model_signature(model)
        name, d_model, proc = model_name or sig["model_name"], sig["d_model"], sig["weight_processing"]
    else:
        # the sites are processing-independent on Gemma (RMSNorm: nothing is centred)
        name, d_model, proc = model_name or declared, None, {}
    cfg = make_config(
        d_in=d_in, d_out=d_out, n_latents=n,
        input_site=h_in.site.hook_name, output_site=out_site.hook_name,
        activation="jumprelu", skip="W_skip" in tensors,
        model_name=name, model_d_model=d_model, weight_processing=proc,
        extra={"source_format": "gemmascope", "input_hook": h_in.name, "output_hook": h_out.name,
               "gain_folded": bool(h_in.norm_output)},
    )
    return build(cfg, tensors, source=source)


def find_params(root: str | os.PathLike) -> dict[int, Path]:
    """``{layer: parameter file}`` of the GemmaScope files under ``root`` (one per layer).

    Raises ``ValueError`` naming the files when a layer has several (several widths or L0s:
    pick one folder per layer and pass ``{layer: path}`` to :func:`load_gemmascope_set`).
    """
    root = Path(root)
    files = sorted(f for name in PARAM_FILES for f in root.rglob(name))
    by_layer: dict[int, list[Path]] = {}
    for f in files:
        by_layer.setdefault(_layer(f, None), []).append(f)
    several = {layer: [str(f.parent.relative_to(root)) for f in fs] for layer, fs in by_layer.items() if len(fs) > 1}
    if several:
        raise ValueError(f"{root}: several GemmaScope transcoders for one layer {several}; pass "
                         f"{{layer: folder}} to load_gemmascope_set to choose")
    if not by_layer:
        raise FileNotFoundError(f"no GemmaScope {' / '.join(PARAM_FILES)} under {root}")
    return {layer: fs[0] for layer, fs in sorted(by_layer.items())}


def load_gemmascope_set(paths: dict[int, str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> TranscoderSet:
    """:func:`load_gemmascope` for each ``{layer: path}``, or for every layer found under a
    folder (:func:`find_params`); the same keyword arguments."""
    if not isinstance(paths, dict):
        paths = find_params(paths)
    out = TranscoderSet()
    for layer, p in sorted(paths.items()):
        out[layer] = load_gemmascope(p, layer=layer, **kwargs)
    return out


__all__ = ["GEMMASCOPE2_HOOKS", "GEMMASCOPE_HOOKS", "PARAM_FILES", "find_params", "load_gemmascope", "load_gemmascope_set",
           "params_file", "read_params"]
