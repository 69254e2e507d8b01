"""SAELens folders: ``cfg.json`` + ``sae_weights.safetensors`` (SAEs, transcoders, skip transcoders).

Layout (jbloomAus/SAELens ``SAE.save_model``; tensors as in ``sae_lens/saes``)::

    W_enc [d_in, d_sae]   b_enc [d_sae]   W_dec [d_sae, d_out]   b_dec [d_out]
    W_skip [d_out, d_in]  (skip transcoders: skip = x @ W_skip.T)
    threshold [d_sae]     (JumpReLU: relu(z) * (z > threshold))

``cfg.json`` has ``architecture`` (standard / topk / jumprelu / transcoder / skip_transcoder /
jumprelu_transcoder), ``d_in``, ``d_sae``, ``d_out``, ``k``, ``apply_b_dec_to_input`` (SAEs only:
the encoder sees ``x - b_dec``; folded exactly into ``b_enc``), ``normalize_activations``,
``hook_name`` (top level in SAELens < 6, in ``metadata`` since 6), ``hook_name_out`` and
``metadata.model_from_pretrained_kwargs`` (the TransformerLens processing the SAE assumes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tc_circuits.fileio import atomic_write
from tc_circuits.validate import strict_int
from tc_circuits.formats._common import (
    build,
    check_shape,
    finite_or_raise,
    fold_pre_encoder_bias,
    make_config,
    processing_from,
    require,
    threshold_to_log,
    tl_model_name,
)
from tc_circuits.models.sites import Site
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
}


def _get(raw: dict[str, Any], key: str) -> Any:
    meta = raw.get("metadata") or {}
    return raw.get(key) if raw.get(key) is not None else meta.get(key)


def load_saelens(path: str | os.PathLike) -> Transcoder:
    """A SAELens SAE / transcoder / skip-transcoder folder as a :class:`Transcoder`."""
    root = Path(path)
    cfg_path, w_path = root / CFG_FILE, root / WEIGHTS_FILE
    for f in (cfg_path, w_path):
        if not f.is_file():
            raise FileNotFoundError(f"SAELens file missing: {f}")
    try:
        raw = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"corrupted {cfg_path}: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{cfg_path} must hold a JSON object, got {type(raw).__name__}")
    source = str(root)
    arch = raw.get("architecture", "standard")
    if arch not in ARCHITECTURES:
        raise ValueError(f"{source}: SAELens architecture {arch!r} is not supported; expected one of {sorted(ARCHITECTURES)}")
    activation, is_transcoder = ARCHITECTURES[arch]
    for key, ok in (("normalize_activations", "none"), ("reshape_activations", "none")):
        if raw.get(key, ok) not in (ok, None):
            raise ValueError(f"{source}: {key}={raw[key]!r} cannot be mapped exactly (only {ok!r})")
    if raw.get("rescale_acts_by_decoder_norm"):
        raise ValueError(f"{source}: rescale_acts_by_decoder_norm=True is not supported")
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
    require(source, t, "W_enc", "b_enc", "W_dec", "b_dec")
    finite_or_raise(source, t)
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
    b_enc = t["b_enc"]
    if not is_transcoder and raw.get("apply_b_dec_to_input", True):
        b_enc = fold_pre_encoder_bias(t["W_enc"], b_enc, t["b_dec"])
    tensors = {"W_enc": t["W_enc"], "b_enc": b_enc, "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    skip = "W_skip" in t
    if arch == "skip_transcoder" and not skip:
        raise ValueError(f"{source}: skip_transcoder without a W_skip tensor")
    if skip:
        check_shape(source, "W_skip", t["W_skip"], (d_out, d_in))
        tensors["W_skip"] = t["W_skip"].T.contiguous()
    if activation == "jumprelu":
        require(source, t, "threshold")
        check_shape(source, "threshold", t["threshold"], (n,))
        tensors["log_threshold"] = threshold_to_log(source, t["threshold"])
    try:
        in_site, out_site = Site.parse(hook_in), Site.parse(hook_out)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err
    meta = raw.get("metadata") or {}
    kwargs = meta.get("model_from_pretrained_kwargs") or raw.get("model_from_pretrained_kwargs") or {}
    cfg = make_config(
        d_in=d_in, d_out=d_out, n_latents=n,
        input_site=in_site.hook_name, output_site=out_site.hook_name,
        activation=activation, k=raw.get("k"), skip=skip,
        model_name=tl_model_name(_get(raw, "model_name")),
        weight_processing=processing_from(kwargs),
        extra={"source_format": "saelens", "architecture": arch},
    )
    return build(cfg, tensors, source=source)


def save_saelens(tc: Transcoder, path: str | os.PathLike) -> Path:
    """Write ``tc`` as a SAELens folder (``apply_b_dec_to_input=False``, so the export is exact).

    SAELens has no TopK or JumpReLU *skip* transcoder and no TopK transcoder; those raise.
    """
    c = tc.cfg
    if c.is_sae and not c.skip:
        arch = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}[c.activation]
    elif c.skip:
        if c.activation != "relu":
            raise ValueError(f"SAELens has no {c.activation} skip transcoder (only ReLU 'skip_transcoder')")
        arch = "skip_transcoder"
    else:
        if c.activation == "topk":
            raise ValueError("SAELens has no TopK transcoder (only ReLU 'transcoder' and 'jumprelu_transcoder')")
        arch = {"relu": "transcoder", "jumprelu": "jumprelu_transcoder"}[c.activation]
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
        "reshape_activations": "none",
        "hook_name": in_site.hook_name,
        "metadata": {
            "model_name": c.model_name,
            "hook_name": in_site.hook_name,
            "hook_head_index": None,
            "model_from_pretrained_kwargs": processing,
        },
    }
    if arch == "topk":
        cfg["k"] = c.k
    if not c.is_sae or c.skip:
        cfg.update(d_out=c.d_out, hook_name_out=out_site.hook_name,
                   hook_layer_out=out_site.layer, hook_head_index_out=None)
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(root / WEIGHTS_FILE, lambda p: save_file(tensors, p))
    text = json.dumps(cfg, indent=2)
    atomic_write(root / CFG_FILE, lambda p: Path(p).write_text(text))
    return root


__all__ = ["ARCHITECTURES", "load_saelens", "save_saelens"]
