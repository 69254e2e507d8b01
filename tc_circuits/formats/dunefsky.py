"""Dunefsky et al. (2024) transcoders (jacobdunefsky/transcoder_circuits), e.g. GPT-2 small's
``final_sparse_autoencoder_gpt2-small_blocks.8.ln2.hook_normalized_24576.pt``.

Each ``.pt`` is a ``torch.save`` of ``{"cfg": LanguageModelSAERunnerConfig, "state_dict": ...}``
(``SparseAutoencoder.save_model``); it is read with :mod:`~tc_circuits.formats.safe_pickle`
(no code from the file runs). The forward pass is::

    acts = relu((x - b_dec) @ W_enc + b_enc)          W_enc [d_in, d_sae]
    out  = acts @ W_dec + b_dec_out                   W_dec [d_sae, d_out]   (transcoders)
    out  = acts @ W_dec + b_dec                       (SAEs)

so ours has ``b_enc' = b_enc - b_dec @ W_enc`` (float64, rounded once) and ``b_dec' = b_dec_out``.
The models were trained on ``HookedTransformer.from_pretrained`` models (all processing on).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor

from tc_circuits.validate import strict_bool
from tc_circuits.formats._common import (
    TL_DEFAULT_PROCESSING,
    build,
    check_shape,
    finite_or_raise,
    fold_pre_encoder_bias,
    make_config,
    require,
    tl_model_name,
)
from tc_circuits.formats.safe_pickle import ForeignRecord, safe_torch_load
from tc_circuits.models.sites import Site
from tc_circuits.coders.transcoder import Transcoder

#: Pickled names of the training config class in the known copies of the code.
CONFIG_CLASSES = (
    "sae_training.config.LanguageModelSAERunnerConfig",
    "transcoder_training.config.LanguageModelSAERunnerConfig",
    "transcoders_slim.sae_training.config.LanguageModelSAERunnerConfig",
)


def _cfg_dict(cfg: Any, source: str) -> dict[str, Any]:
    if isinstance(cfg, ForeignRecord):
        return cfg.as_dict()
    if isinstance(cfg, dict):
        return dict(cfg)
    raise ValueError(f"{source}: 'cfg' is a {type(cfg).__name__}, expected a config object or dict")


def load_dunefsky(
    path: str | os.PathLike, *, processing: dict[str, bool] | None = None
) -> Transcoder:
    """A Dunefsky-style ``.pt`` transcoder (or SAE) as a :class:`Transcoder`, loaded safely."""
    source = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {source}")
    obj = safe_torch_load(path, foreign_classes=CONFIG_CLASSES)
    if not isinstance(obj, dict) or "cfg" not in obj or "state_dict" not in obj:
        raise ValueError(f"{source}: expected a dict with 'cfg' and 'state_dict' keys")
    cfg = _cfg_dict(obj["cfg"], source)
    sd: dict[str, Tensor] = dict(obj["state_dict"])
    require(source, sd, "W_enc", "b_enc", "W_dec", "b_dec")
    finite_or_raise(source, sd)
    is_tc = strict_bool(cfg.get("is_transcoder", False), "is_transcoder", source)
    if is_tc:
        require(source, sd, "b_dec_out")
    d_in, n = sd["W_enc"].shape
    d_out = sd["W_dec"].shape[1]
    for key, value in (("d_in", d_in), ("d_sae", n), ("d_out", d_out if is_tc else None)):
        if value is not None and cfg.get(key) is not None and int(cfg[key]) != value:
            raise ValueError(f"{source}: cfg {key}={cfg[key]} but the weights imply {value}")
    check_shape(source, "b_enc", sd["b_enc"], (n,))
    check_shape(source, "b_dec", sd["b_dec"], (d_in,))
    if is_tc:
        check_shape(source, "b_dec_out", sd["b_dec_out"], (d_out,))
    elif d_out != d_in:
        raise ValueError(f"{source}: SAE with W_dec of width {d_out} != d_in {d_in}")
    hook_in = cfg.get("hook_point")
    hook_out = cfg.get("out_hook_point") if is_tc else hook_in
    if not hook_in or not hook_out:
        raise ValueError(f"{source}: cfg names no hook_point{'/out_hook_point' if is_tc else ''}")
    if cfg.get("hook_point_head_index") is not None:
        raise ValueError(f"{source}: per-head SAEs are not supported")
    try:
        in_site, out_site = Site.parse(hook_in), Site.parse(hook_out)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err
    tensors = {
        "W_enc": sd["W_enc"],
        "b_enc": fold_pre_encoder_bias(sd["W_enc"], sd["b_enc"], sd["b_dec"]),
        "W_dec": sd["W_dec"],
        "b_dec": sd["b_dec_out"] if is_tc else sd["b_dec"],
    }
    tc_cfg = make_config(
        d_in=d_in, d_out=d_out, n_latents=n,
        input_site=in_site.hook_name, output_site=out_site.hook_name,
        activation="relu",
        model_name=tl_model_name(cfg.get("model_name")),
        weight_processing=dict(TL_DEFAULT_PROCESSING if processing is None else processing),
        extra={"source_format": "dunefsky", "l1_coefficient": cfg.get("l1_coefficient")},
    )
    return build(tc_cfg, tensors, source=source)


__all__ = ["CONFIG_CLASSES", "load_dunefsky"]
