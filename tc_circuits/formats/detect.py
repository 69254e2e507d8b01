"""Recognise a checkpoint's format from its files, and load any supported one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tc_circuits.coders.clt import CLT_CONFIG_NAME, CrossLayerTranscoder
from tc_circuits.coders.transcoder import CONFIG_NAME, WEIGHTS_NAME, Transcoder, TranscoderSet

#: Supported formats (``--from`` / ``format=`` values).
FORMATS = ("tc_circuits", "circuit-tracer", "sparsify", "saelens", "dunefsky", "gemmascope")
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl")


def detect_format(path: str | os.PathLike) -> str:
    """The format of the checkpoint at ``path`` (one of :data:`FORMATS`), from its file names."""
    p = Path(path)
    if p.is_file():
        suffix = p.suffix if p.suffix != ".gz" else Path(p.stem).suffix
        if suffix in _PICKLE_SUFFIXES:
            return "dunefsky"
        if p.name in ("params.npz", "params.safetensors"):
            return "gemmascope"
        raise ValueError(
            f"cannot tell the format of file {p}; expected a folder (circuit-tracer, sparsify, "
            f"SAELens, tc_circuits, GemmaScope), a GemmaScope params.npz / params.safetensors or a Dunefsky torch pickle ({', '.join(_PICKLE_SUFFIXES)}, "
            f"optionally gzip-compressed: .pkl.gz)"
        )
    if not p.is_dir():
        raise FileNotFoundError(f"no such checkpoint: {p}")
    if (p / "config.yaml").is_file():
        return "circuit-tracer"
    if (p / "params.npz").is_file() or (p / "params.safetensors").is_file():
        return "gemmascope"
    if (p / CLT_CONFIG_NAME).is_file():  # a tc_circuits cross-layer transcoder
        return "tc_circuits"
    if (p / "cfg.json").is_file():
        if (p / "sae.safetensors").is_file():
            return "sparsify"
        if (p / "sae_weights.safetensors").is_file():
            return "saelens"
        if (p / WEIGHTS_NAME).is_file():
            return "tc_circuits"
    subs = [s for s in p.iterdir() if s.is_dir()]
    if any(next(s.rglob("params.npz"), None) or next(s.rglob("params.safetensors"), None)
           for s in subs if s.name.startswith(("layer_", "transcoder"))):
        return "gemmascope"  # a GemmaScope repository tree: layer_L/width_W/average_l0_N/params.npz
    if any((s / CONFIG_NAME).is_file() and (s / WEIGHTS_NAME).is_file() for s in subs if s.name.startswith("layer_")):
        return "tc_circuits"
    if any((s / "cfg.json").is_file() and (s / "sae.safetensors").is_file() for s in subs):
        return "sparsify"
    if any((s / "cfg.json").is_file() and (s / "sae_weights.safetensors").is_file() for s in subs):
        return "saelens"
    raise ValueError(
        f"cannot tell the format of {p}: expected config.yaml (circuit-tracer), cfg.json with "
        f"sae.safetensors (sparsify), sae_weights.safetensors (SAELens) or {WEIGHTS_NAME} (tc_circuits)"
    )


def _is_set(p: Path) -> bool:
    return p.is_dir() and not (p / "cfg.json").is_file()


def load_any(
    path: str | os.PathLike, *, format: str | None = None, **kwargs: Any
) -> Transcoder | TranscoderSet | CrossLayerTranscoder:
    """Load a checkpoint of any supported format (auto-detected unless ``format`` is given).

    Folders of several per-layer checkpoints load as a :class:`TranscoderSet`. ``kwargs`` go to
    the format's loader (``hf_model=``/``processing=`` for sparsify, ``processing=`` for
    Dunefsky and circuit-tracer; ``model=``, the processed target model, and ``hf_model=``,
    its unprocessed weights, for circuit-tracer, sparsify, SAELens and GemmaScope).
    """
    p = Path(path)
    fmt = format or detect_format(p)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if fmt == "tc_circuits":
        if kwargs:
            raise ValueError(f"tc_circuits checkpoints take no options, got {sorted(kwargs)}")
        if (p / CLT_CONFIG_NAME).is_file():
            return CrossLayerTranscoder.load(p)
        return TranscoderSet.load(p) if _is_set(p) else Transcoder.load(p)
    if fmt == "circuit-tracer":
        from tc_circuits.formats.circuit_tracer_clt import is_circuit_tracer_clt, load_circuit_tracer_clt

        if is_circuit_tracer_clt(p):  # model_kind: cross_layer_transcoder
            extra = sorted(set(kwargs) - {"processing"})
            if extra:
                raise ValueError(f"{p}: a circuit-tracer cross-layer transcoder takes only processing=, got {extra}")
            return load_circuit_tracer_clt(p, **kwargs)
        from tc_circuits.formats.circuit_tracer import load_circuit_tracer

        return load_circuit_tracer(p, **kwargs)
    if fmt == "sparsify":
        from tc_circuits.formats.sparsify import load_sparsify, load_sparsify_many

        return load_sparsify_many(p, **kwargs) if _is_set(p) else load_sparsify(p, **kwargs)
    if fmt == "saelens":
        from tc_circuits.formats.saelens import load_saelens

        extra = sorted(set(kwargs) - {"model", "hf_model"})
        if extra:
            raise ValueError(f"SAELens checkpoints take only model= and hf_model=, got {extra}")
        if _is_set(p):
            return _load_saelens_set(p, **kwargs)
        return load_saelens(p, **kwargs)
    if fmt == "gemmascope":
        from tc_circuits.formats.gemmascope import load_gemmascope

        if p.is_dir() and not any((p / f).is_file() for f in ("params.npz", "params.safetensors")):
            from tc_circuits.formats.gemmascope import load_gemmascope_set

            return load_gemmascope_set(p, **kwargs)
        return load_gemmascope(p, **kwargs)
    from tc_circuits.formats.dunefsky import load_dunefsky

    return load_dunefsky(p, **kwargs)


def _load_saelens_set(p: Path, **kwargs: Any) -> TranscoderSet:
    from tc_circuits.formats.saelens import load_saelens

    out = TranscoderSet()
    for sub in sorted(s for s in p.iterdir() if (s / "cfg.json").is_file()):
        tc = load_saelens(sub, **kwargs)
        if tc.cfg.layer in out:
            raise ValueError(f"{p}: two SAELens folders map to layer {tc.cfg.layer}")
        out[tc.cfg.layer] = tc
    return out


__all__ = ["FORMATS", "detect_format", "load_any"]
