"""SAELens folders: ``cfg.json`` + ``sae_weights.safetensors`` (SAEs, transcoders, skip transcoders).

Layout (jbloomAus/SAELens ``SAE.save_model``; tensors as in ``sae_lens/saes``)::

    W_enc [d_in, d_sae]   b_enc [d_sae]   W_dec [d_sae, d_out]   b_dec [d_out]
    W_skip [d_out, d_in]  (skip transcoders: skip = x @ W_skip.T)
    threshold [d_sae]     (JumpReLU: relu(z) * (z > threshold))

``cfg.json`` has ``architecture`` (standard / topk / jumprelu / gated / transcoder /
skip_transcoder / jumprelu_transcoder / jumprelu_skip_transcoder), ``d_in``, ``d_sae``,
``d_out``, ``k``, ``apply_b_dec_to_input`` (the encoder sees ``x - b_dec``; folded exactly into
``b_enc``), ``normalize_activations``, ``rescale_acts_by_decoder_norm``, ``hook_name`` (top
level in SAELens < 6, in ``metadata`` since 6), ``hook_name_out``,
``metadata.model_from_pretrained_kwargs`` (the TransformerLens processing the SAE assumes) and
``metadata.sae_lens_version`` (without it SAELens reads the file as a pre-6.0 config).

Folded exactly into our weights (float64, rounded once):

* ``rescale_acts_by_decoder_norm`` (SAELens' TopK default): ``pre * |W_dec_i|`` before TopK,
  ``acts / |W_dec_i|`` before decoding -> ``W_enc' = W_enc |W_dec|``, ``b_enc' = b_enc |W_dec|``,
  ``W_dec' = W_dec / |W_dec|`` (SAELens' own ``fold_W_dec_norm``);
* ``normalize_activations="expected_average_only_in"``: SAELens' trainer folds the scaling
  factor into the weights it saves at the end (its inference forward then applies none); a
  mid-training checkpoint has it in ``activation_scaler.json`` and it is folded here as
  SAELens' ``fold_activation_norm_scaling_factor`` does;
* gated SAEs: ``(x W + b_gate > 0) * relu(x W e^r + b_mag)`` is a JumpReLU on
  ``z = x W e^r + b_mag`` with threshold ``max(b_mag - e^r b_gate, 0)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tc_circuits.fileio import atomic_write
from tc_circuits.validate import read_checkpoint_config, strict_int
from tc_circuits.formats._common import (
    build,
    check_shape,
    finite_or_raise,
    make_config,
    processing_from,
    require,
    threshold_to_log,
    tl_model_name,
)
from tc_circuits.coders.transcoder import Transcoder

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"

#: architecture -> (activation, is_transcoder)
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "standard": ("relu", False),
    "topk": ("topk", False),
    "jumprelu": ("jumprelu", False),
    "transcoder": ("relu", True),
    "skip_transcoder": ("relu", True),
    "jumprelu_transcoder": ("jumprelu", True),
    "jumprelu_skip_transcoder": ("jumprelu", True),
    "gated": ("jumprelu", False),
}
#: SAELens version our cfg.json claims (the 6.x layout it is written in).
SAELENS_VERSION = "6.54.0"
SCALER_FILE = "activation_scaler.json"


def _get(raw: dict[str, Any], key: str) -> Any:
    meta = raw.get("metadata") or {}
    return raw.get(key) if raw.get(key) is not None else meta.get(key)


def load_saelens(
    path: str | os.PathLike,
    *,
    overrides: dict[str, Any] | None = None,
    scaling_factor: float | None = None,
    model: Any = None,
    hf_model: Any = None,
) -> Transcoder:
    """A SAELens SAE / transcoder / skip-transcoder folder as a :class:`Transcoder`.

    ``overrides`` (a pretrained release's ``config_overrides``) update ``cfg.json`` as SAELens'
    ``from_pretrained`` does; ``scaling_factor`` (a release's ``norm_scaling_factor``) is
    folded like ``fold_activation_norm_scaling_factor``.

    ``model`` (the processed target model): the cfg's ``model_name`` family and ``d_in`` are
    checked against it, the processing the SAE was trained under
    (``model_from_pretrained_kwargs``) is reconciled with the model's
    (:mod:`tc_circuits.formats.retarget`) and the model's name and flags are recorded.
    ``hf_model`` (the unprocessed weights): needed for hooks read after the MLP-input norm's
    gain (``blocks.L.mlp.hook_in`` on an unprocessed model, an ``hf_hook_name`` such as
    ``model.layers.L.pre_feedforward_layernorm.output``), whose gain folds into the encoder.
    """
    root = Path(path)
    raw, w_path = read_checkpoint_config(root, CFG_FILE, WEIGHTS_FILE, "SAELens")
    cfg_path = root / CFG_FILE
    source = str(root)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    if isinstance(raw.get("metadata"), dict) and "model_from_pretrained_kwargs" in (overrides or {}):
        raw["metadata"]["model_from_pretrained_kwargs"] = {
            **(raw["metadata"].get("model_from_pretrained_kwargs") or {}), **overrides["model_from_pretrained_kwargs"]}
    arch = raw.get("architecture", "standard")
    if arch not in ARCHITECTURES:
        raise ValueError(f"{source}: SAELens architecture {arch!r} is not supported; expected one of {sorted(ARCHITECTURES)}")
    activation, is_transcoder = ARCHITECTURES[arch]
    norm = raw.get("normalize_activations") or "none"
    if norm not in ("none", "expected_average_only_in"):
        raise ValueError(
            f"{source}: normalize_activations={norm!r} cannot be mapped exactly "
            f"(only 'none' and 'expected_average_only_in')"
        )
    if (raw.get("reshape_activations") or "none") != "none":
        raise ValueError(f"{source}: reshape_activations={raw['reshape_activations']!r} cannot be mapped exactly")
    for key in ("hook_head_index", "hook_head_index_out"):
        if _get(raw, key) is not None:
            raise ValueError(f"{source}: per-head SAEs ({key}={_get(raw, key)}) are not supported")
    hook_in = _get(raw, "hook_name")
    hook_out = _get(raw, "hook_name_out") if is_transcoder else hook_in
    if not isinstance(hook_in, str) or not isinstance(hook_out, str):
        raise ValueError(f"{cfg_path}: hook_name must be a string, got {hook_in!r} / {hook_out!r}")
    if not hook_in or not hook_out:
        raise ValueError(f"{source}: cfg.json names no hook_name{'/hook_name_out' if is_transcoder else ''}")
    try:
        t = load_file(str(w_path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"corrupted or truncated safetensors file {w_path}: {err}") from err
    require(source, t, "W_enc", "W_dec", "b_dec", *(("b_gate", "b_mag", "r_mag") if arch == "gated" else ("b_enc",)))
    finite_or_raise(source, t)
    if arch == "gated":
        t = dict(t)
        scale = t["r_mag"].double().exp()
        theta = (t["b_mag"].double() - scale * t["b_gate"].double()).clamp_min(0)
        t["W_enc"] = (t["W_enc"].double() * scale).to(t["W_enc"].dtype)
        t["b_enc"], t["threshold"] = t["b_mag"], theta.to(t["b_mag"].dtype)
    for key in ("d_in", "d_sae"):
        if key not in raw:
            raise ValueError(f"{cfg_path}: missing field {key!r} (an int)")
    d_in, n = strict_int(raw["d_in"], "d_in", str(cfg_path), minimum=1), strict_int(raw["d_sae"], "d_sae", str(cfg_path), minimum=1)
    d_out = strict_int(raw.get("d_out", d_in), "d_out", str(cfg_path), minimum=1) if is_transcoder else d_in
    if raw.get("k") is not None:
        strict_int(raw["k"], "k", str(cfg_path), minimum=1)
    check_shape(source, "W_enc", t["W_enc"], (d_in, n))
    check_shape(source, "b_enc", t["b_enc"], (n,))
    check_shape(source, "W_dec", t["W_dec"], (n, d_out))
    check_shape(source, "b_dec", t["b_dec"], (d_out,))
    dtype = t["W_enc"].dtype
    W_enc, b_enc, W_dec, b_dec = (t[key].double() for key in ("W_enc", "b_enc", "W_dec", "b_dec"))
    thr = t["threshold"].double() if "threshold" in t else None
    scaler = _scaling_factor(root) if norm == "expected_average_only_in" else None
    if scaling_factor is not None:
        if not scaling_factor > 0:
            raise ValueError(f"{source}: scaling_factor must be positive, got {scaling_factor!r}")
        scaler = float(scaling_factor)
    if scaler is not None:  # SAELens fold_activation_norm_scaling_factor
        W_enc, W_dec, b_dec = W_enc * scaler, W_dec / scaler, b_dec / scaler
    if not is_transcoder and raw.get("apply_b_dec_to_input", True):  # transcoders never apply it
        b_enc = b_enc - b_dec @ W_enc
    if raw.get("rescale_acts_by_decoder_norm"):  # SAELens fold_W_dec_norm
        norms = W_dec.norm(dim=-1)
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
        if thr is not None:
            thr = thr * norms
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    skip = "W_skip" in t
    if arch.endswith("skip_transcoder") and not skip:
        raise ValueError(f"{source}: {arch} without a W_skip tensor")
    if skip:
        check_shape(source, "W_skip", t["W_skip"], (d_out, d_in))
        tensors["W_skip"] = t["W_skip"].double().T
    meta = raw.get("metadata") or {}
    kwargs = meta.get("model_from_pretrained_kwargs") or raw.get("model_from_pretrained_kwargs") or {}
    declared = _get(raw, "model_name")
    tensors, in_site, out_site, proc = _retarget(
        tensors, raw, source=source, hook_in=hook_in, hook_out=hook_out, declared=declared,
        kwargs=kwargs, model=model, hf_model=hf_model, is_sae=not is_transcoder, d_in=d_in)
    tensors = {key: v.to(dtype).contiguous() for key, v in tensors.items()}
    if activation == "jumprelu":
        require(source, t, "threshold")
        check_shape(source, "threshold", t["threshold"], (n,))
        # SAELens' JumpReLU is relu(z) * (z > t): for t < 0 that is ours with t = 0
        tensors["log_threshold"] = threshold_to_log(source, thr.clamp_min(0).to(dtype))
    model_name = tl_model_name(declared)
    model_d_model = (raw.get("tc_circuits") or meta.get("tc_circuits") or {}).get("model_d_model")
    if model is not None:
        from tc_circuits.models.model_info import model_signature

        sig = model_signature(model)
        model_name, model_d_model = sig["model_name"], sig["d_model"]
    cfg = make_config(
        d_in=d_in, d_out=d_out, n_latents=n,
        input_site=in_site.hook_name, output_site=out_site.hook_name,
        activation=activation, k=raw.get("k"), skip=skip,
        model_name=model_name,
        weight_processing=proc,
        model_d_model=model_d_model,
        extra={"source_format": "saelens", "architecture": arch},
    )
    return build(cfg, tensors, source=source)


def _retarget(tensors, raw, *, source, hook_in, hook_out, declared, kwargs, model, hf_model, is_sae, d_in):
    """Our sites for the cfg's hooks, checked against (and reconciled with) the target model."""
    from tc_circuits.formats.family_sites import check_family, check_width, family_of_name, hf_hook, tl_hook
    from tc_circuits.formats.retarget import retarget
    from tc_circuits.models.norm_gains import WeightSource

    proc = processing_from(kwargs)
    family = family_of_name(declared)
    check_family(source, "model_name", declared, family, model)
    check_width(source, "d_in", d_in, model)
    if hf_model is not None:
        hf_model = WeightSource(hf_model, name=f"{source}: hf_model")
        check_family(source, "hf_model", hf_model.name, hf_model.family, model)
        family = family or hf_model.family
    hf_in, hf_out = _get(raw, "hf_hook_name"), _get(raw, "hf_hook_name_out") if not is_sae else None
    try:
        # SAELens' Gemma-3 configs name the Hugging Face hook point the SAE was trained on
        # beside a TransformerBridge alias; the HF name says exactly what was read
        if isinstance(hf_in, str) and hf_in:
            h_in = hf_hook(hf_in, family=family)
        else:
            h_in = tl_hook(hook_in, fold_ln=proc["fold_ln"])
        if is_sae:
            h_out = h_in
        elif isinstance(hf_out, str) and hf_out:
            h_out = hf_hook(hf_out, family=family)
        else:
            h_out = tl_hook(hook_out, fold_ln=proc["fold_ln"])
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err
    return retarget(tensors, source=source, in_hook=h_in, out_hook=h_out, family=family,
                    hf_model=hf_model, model=model, processing=proc, is_sae=is_sae)


def _scaling_factor(root: Path) -> float | None:
    """The unfolded activation scaling factor of a mid-training SAELens checkpoint, if any."""
    f = root / SCALER_FILE
    if not f.is_file():
        return None
    try:
        value = json.loads(f.read_text()).get("scaling_factor")
    except (json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"corrupted {f}: {err}") from err
    if value is not None and not (isinstance(value, (int, float)) and value > 0):
        raise ValueError(f"{f}: scaling_factor must be a positive number, got {value!r}")
    return None if value is None else float(value)


def save_saelens(tc: Transcoder, path: str | os.PathLike) -> Path:
    """Write ``tc`` as a SAELens folder (``apply_b_dec_to_input=False``, so the export is exact).

    Every architecture SAELens 6 has: SAEs (standard / topk / jumprelu), transcoders and skip
    transcoders (ReLU and JumpReLU). SAELens has no TopK transcoder; that raises.
    """
    c = tc.cfg
    if c.is_sae and not c.skip:
        arch = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}[c.activation]
    else:
        if c.activation == "topk":
            raise ValueError(
                "SAELens has no TopK transcoder or TopK skip transcoder (its transcoders are ReLU "
                "or JumpReLU); export to circuit-tracer or sparsify instead"
            )
        arch = {"relu": "transcoder", "jumprelu": "jumprelu_transcoder"}[c.activation]
        if c.skip:
            arch = {"transcoder": "skip_transcoder", "jumprelu_transcoder": "jumprelu_skip_transcoder"}[arch]
    tensors = {
        "W_enc": tc.W_enc.detach().contiguous(),
        "b_enc": tc.b_enc.detach().contiguous(),
        "W_dec": tc.W_dec.detach().contiguous(),
        "b_dec": tc.b_dec.detach().contiguous(),
    }
    if tc.W_skip is not None:
        tensors["W_skip"] = tc.W_skip.detach().T.contiguous()
    if tc.log_threshold is not None:
        tensors["threshold"] = tc.log_threshold.detach().exp().contiguous()
    in_site, out_site = c.in_site, c.out_site
    processing = {k: bool(v) for k, v in c.weight_processing.items()}
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": c.d_in,
        "d_sae": c.n_latents,
        "dtype": str(tc.W_enc.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "reshape_activations": "none",
        "hook_name": in_site.hook_name,
        "metadata": {
            "model_name": c.model_name,
            "hook_name": in_site.hook_name,
            "hook_head_index": None,
            "model_from_pretrained_kwargs": processing,
            "sae_lens_version": SAELENS_VERSION,
            "sae_lens_training_version": SAELENS_VERSION,
            # SAELens keeps unknown metadata keys when it loads and re-saves
            "tc_circuits": {"model_d_model": c.model_d_model},
        },
    }
    if arch == "topk":
        cfg["k"] = c.k
    if not c.is_sae or c.skip:
        cfg.update(d_out=c.d_out, hook_name_out=out_site.hook_name,
                   hook_layer_out=out_site.layer, hook_head_index_out=None)
        cfg["metadata"].update(hook_name_out=out_site.hook_name)
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(root / WEIGHTS_FILE, lambda p: save_file(tensors, p))
    text = json.dumps(cfg, indent=2)
    atomic_write(root / CFG_FILE, lambda p: Path(p).write_text(text))
    return root


__all__ = ["ARCHITECTURES", "SAELENS_VERSION", "load_saelens", "save_saelens"]
