"""circuit-tracer per-layer transcoder sets: ``config.yaml`` + ``layer_{i}.safetensors``.

Layout (decoderesearch/circuit-tracer, ``SingleLayerTranscoder`` / ``load_transcoder_set``)::

    config.yaml            model_name, model_kind: transcoder_set,
                           feature_input_hook / feature_output_hook (relative to blocks.{L}),
                           transcoders: [layer_0.safetensors, ...]   (optional activation, k)
    layer_{i}.safetensors  W_enc [n, d_in]   (encode = F.linear(x, W_enc, b_enc))
                           W_dec [n, d_out]  (decode = acts @ W_dec + b_dec)
                           b_enc [n], b_dec [d_out]
                           W_skip [d_out, d_in] optional (skip = x @ W_skip.T)
                           threshold [n] optional (JumpReLU; also read:
                           activation_function.threshold, log_thresholds)

Ours is ``W_enc [d_in, n]``, ``W_skip [d_in, d_out]``: both are transposed; nothing else changes,
so export -> import is bit-exact, except that a JumpReLU threshold is stored as ``threshold``
(what circuit-tracer reads) and ours is ``log_threshold``: ``log(exp(t))`` may differ by an ulp.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tc_circuits.fileio import atomic_write
from tc_circuits.formats._common import build, check_shape, make_config, require, threshold_to_log
from tc_circuits.models.sites import Site
from tc_circuits.validate import safe_join
from tc_circuits.coders.transcoder import Transcoder, TranscoderSet

CONFIG_FILE = "config.yaml"

#: circuit-tracer's relative hook names -> our site kinds (others are TransformerLens names).
_HOOK_ALIASES = {"mlp.hook_in": "mlp_in", "mlp.hook_out": "mlp_out"}
_THRESHOLD_KEYS = ("threshold", "activation_function.threshold")


def _site(hook: str, layer: int, source: str) -> Site:
    if hook in _HOOK_ALIASES:
        return Site(layer, _HOOK_ALIASES[hook])
    try:
        return Site.parse(f"blocks.{layer}.{hook}")
    except ValueError as err:
        raise ValueError(f"{source}: unsupported hook {hook!r}: {err}") from err


def _relative_hook(site: Site) -> str:
    for alias, kind in _HOOK_ALIASES.items():
        if site.kind == kind:
            return alias
    prefix = f"blocks.{site.layer}."
    return site.hook_name[len(prefix):]


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.yaml`` of a circuit-tracer transcoder set (checked)."""
    cfg_path = Path(path) / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no circuit-tracer {CONFIG_FILE} in {path}")
    try:
        raw = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"corrupted {cfg_path}: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{cfg_path} must hold a mapping")
    kind = raw.get("model_kind", "transcoder_set")
    if kind != "transcoder_set":
        raise ValueError(f"{cfg_path}: model_kind {kind!r} is not supported (only per-layer 'transcoder_set')")
    for key in ("feature_input_hook", "feature_output_hook", "transcoders"):
        if key not in raw:
            raise ValueError(f"{cfg_path}: missing key {key!r}")
    if not isinstance(raw["transcoders"], list) or not raw["transcoders"]:
        raise ValueError(f"{cfg_path}: 'transcoders' must be a non-empty list of layer files")
    return raw


def _layer_file(root: Path, entry: str, source: str) -> Path:
    if str(entry).startswith("hf://"):
        local = safe_join(root, str(entry).rsplit("/", 1)[-1].split("?", 1)[0], source)
        if local.is_file():
            return local
        raise ValueError(
            f"{source}: layer file {entry!r} is on the hub; download the repository with "
            f"tc_circuits.formats.hub.load_from_hub first"
        )
    p = safe_join(root, str(entry), source)  # no absolute paths, no ../ out of the folder
    if not p.is_file():
        raise FileNotFoundError(f"{source}: layer file {p} missing")
    return p


def load_layer(
    file: str | os.PathLike,
    layer: int,
    *,
    input_hook: str = "mlp.hook_in",
    output_hook: str = "mlp.hook_out",
    activation: str | None = None,
    k: int | None = None,
    model_name: str | None = None,
    processing: dict[str, bool] | None = None,
) -> Transcoder:
    """One circuit-tracer ``layer_{i}.safetensors`` file as a :class:`Transcoder`."""
    source = str(file)
    try:
        t = load_file(source)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"corrupted or truncated safetensors file {source}: {err}") from err
    require(source, t, "W_enc", "W_dec", "b_enc", "b_dec")
    n, d_in = t["W_enc"].shape
    d_out = t["b_dec"].shape[0]
    check_shape(source, "b_enc", t["b_enc"], (n,))
    check_shape(source, "W_dec", t["W_dec"], (n, d_out))
    tensors = {
        "W_enc": t["W_enc"].T.contiguous(),
        "b_enc": t["b_enc"],
        "W_dec": t["W_dec"],
        "b_dec": t["b_dec"],
    }
    skip = "W_skip" in t
    if skip:
        check_shape(source, "W_skip", t["W_skip"], (d_out, d_in))
        tensors["W_skip"] = t["W_skip"].T.contiguous()
    thr_key = next((key for key in _THRESHOLD_KEYS if key in t), None)
    if thr_key is not None or "log_thresholds" in t:
        act = "jumprelu"
        if thr_key is not None:
            check_shape(source, thr_key, t[thr_key], (n,))
            tensors["log_threshold"] = threshold_to_log(source, t[thr_key])
        else:
            check_shape(source, "log_thresholds", t["log_thresholds"], (n,))
            tensors["log_threshold"] = t["log_thresholds"]
    else:
        act = {None: "relu", "relu": "relu", "topk": "topk", "jump_relu": "jumprelu",
               "jumprelu": "jumprelu"}.get(activation, "?")
        if act == "?":
            raise ValueError(f"{source}: unsupported activation {activation!r}")
        if act == "jumprelu":
            raise ValueError(f"{source}: activation is JumpReLU but the file holds no threshold")
    cfg = make_config(
        d_in=d_in, d_out=d_out, n_latents=n,
        input_site=_site(input_hook, layer, source).hook_name,
        output_site=_site(output_hook, layer, source).hook_name,
        activation=act, k=k, skip=skip,
        model_name=model_name, weight_processing=dict(processing or {}),
        extra={"source_format": "circuit-tracer"},
    )
    return build(cfg, tensors, source=source)


def load_circuit_tracer(
    path: str | os.PathLike,
    *,
    processing: dict[str, bool] | None = None,
) -> TranscoderSet:
    """A circuit-tracer transcoder-set folder (``config.yaml`` + layer files) as a TranscoderSet.

    ``processing`` records the TransformerLens weight processing the transcoders assume
    (circuit-tracer's own files do not say; default: nothing recorded).
    """
    from tc_circuits.formats._common import tl_model_name

    root = Path(path)
    raw = read_config(root)
    out = TranscoderSet()
    for layer, entry in enumerate(raw["transcoders"]):
        file = _layer_file(root, entry, str(root / CONFIG_FILE))
        match = re.search(r"layer_?(\d+)", Path(str(entry)).name)
        if match and int(match.group(1)) != layer:
            raise ValueError(f"{root / CONFIG_FILE}: entry {layer} is {entry!r}, which names another layer")
        out[layer] = load_layer(
            file, layer,
            input_hook=raw["feature_input_hook"], output_hook=raw["feature_output_hook"],
            activation=raw.get("activation"), k=raw.get("k"),
            model_name=tl_model_name(raw.get("model_name")), processing=processing,
        )
    return out


def save_circuit_tracer(
    transcoders: TranscoderSet | dict[int, Transcoder], path: str | os.PathLike, *, model_name: str | None = None
) -> Path:
    """Write ``transcoders`` as a circuit-tracer transcoder set (layers 0..L-1, one per layer)."""
    layers = sorted(transcoders)
    if layers != list(range(len(layers))):
        raise ValueError(f"circuit-tracer needs one transcoder for every layer 0..L-1, got layers {layers}")
    first = transcoders[layers[0]].cfg
    in_rel, out_rel = _relative_hook(first.in_site), _relative_hook(first.out_site)
    activations = {transcoders[layer].cfg.activation for layer in layers}
    ks = {transcoders[layer].cfg.k for layer in layers}
    if len(activations) != 1 or (activations == {"topk"} and len(ks) != 1):
        raise ValueError(f"circuit-tracer sets share one activation; got {activations} with k in {ks}")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for layer in layers:
        tc = transcoders[layer]
        c = tc.cfg
        if (_relative_hook(c.in_site), _relative_hook(c.out_site)) != (in_rel, out_rel) or c.layer != layer:
            raise ValueError(f"layer {layer}: sites {c.input_site} -> {c.output_site} differ from layer 0's pattern")
        tensors = {
            "W_enc": tc.W_enc.detach().T.contiguous(),
            "W_dec": tc.W_dec.detach().contiguous(),
            "b_enc": tc.b_enc.detach().contiguous(),
            "b_dec": tc.b_dec.detach().contiguous(),
        }
        if tc.W_skip is not None:
            tensors["W_skip"] = tc.W_skip.detach().T.contiguous()
        if tc.log_threshold is not None:
            tensors["threshold"] = tc.log_threshold.detach().exp().contiguous()
        name = f"layer_{layer}.safetensors"
        atomic_write(root / name, lambda p, t=tensors: save_file(t, p))
        files.append(name)
    activation = activations.pop()
    cfg: dict[str, Any] = {
        "model_name": model_name or first.model_name,
        "model_kind": "transcoder_set",
        "feature_input_hook": in_rel,
        "feature_output_hook": out_rel,
        "activation": {"jumprelu": "jump_relu"}.get(activation, activation),
        "transcoders": files,
    }
    if activation == "topk":
        cfg["k"] = ks.pop()
    text = yaml.safe_dump(cfg, sort_keys=False)
    atomic_write(root / CONFIG_FILE, lambda p: Path(p).write_text(text))
    return root


__all__ = ["load_circuit_tracer", "load_layer", "read_config", "save_circuit_tracer"]
