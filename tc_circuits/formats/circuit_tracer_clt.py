"""circuit-tracer cross-layer transcoders: ``config.yaml`` + per-layer ``W_enc_{i}`` / ``W_dec_{i}`` files.

Layout (safety-research/circuit-tracer, ``transcoder/cross_layer_transcoder.py``:
``CrossLayerTranscoder.to_safetensors`` / ``load_clt``; ``utils/hf_utils.py``: ``load_transcoders``)::

    config.yaml              model_name, model_kind: cross_layer_transcoder,
                             feature_input_hook / feature_output_hook (relative to blocks.{L})
    W_enc_{i}.safetensors    W_enc_{i} [n, d_model]   (features = x @ W_enc_i.T + b_enc_i)
                             b_enc_{i} [n], b_dec_{i} [d_model] (the bias of output layer i)
                             threshold_{i} [n]        (JumpReLU only)
    W_dec_{i}.safetensors    W_dec_{i} [n, N - i, d_model]  (row j writes output layer i + j)

Ours: ``W_enc[i] = W_enc_i.T``; ``W_dec[i]`` has exactly circuit-tracer's layout; ``b_enc``,
``b_dec`` are stacked. Extensions this module writes and reads, which circuit-tracer's loader
ignores: ``W_skip_{i} [d_model, d_model]`` in ``W_enc_{i}.safetensors`` (a skip at layer i,
``x @ W_skip_i`` — circuit-tracer's own ``W_skip`` has the same convention but its files do
not store it), and ``activation: topk`` + ``k`` in ``config.yaml`` (circuit-tracer's CLT knows
only ReLU and JumpReLU and would read a TopK CLT as ReLU: TopK export needs ``allow_topk=True``).

Sites, as for per-layer sets (:mod:`tc_circuits.formats.circuit_tracer`): our ``mlp_in`` is
written as ``feature_input_hook: ln2.hook_normalized`` (the same ``n(x)`` in circuit-tracer's
unprocessed model) and ``mlp_out`` as ``mlp.hook_out``. Importing a CLT that reads
circuit-tracer's ``mlp.hook_in`` (the LayerNorm output *with* gain and bias) would need those
folded into every encoder; that is refused with a clear error. Other relative hooks
(``hook_resid_mid`` ...) are kept as they are (attribution needs ``mlp_in``).

Export -> import is bit-exact except JumpReLU thresholds (stored as ``threshold``, ours is
``log_threshold``: ``log(exp(t))`` may differ by an ulp), as for per-layer sets.

Lazy loading: :class:`CircuitTracerCLTFiles` opens the folder without reading the weights;
``encoder(i)`` / ``decoder_rows(i, ids)`` read one layer's encoder or a few decoder rows
(``safe_open(...).get_slice``), and :meth:`CircuitTracerCLTFiles.to_clt` fills a
:class:`~tc_circuits.coders.clt.CrossLayerTranscoder` one file at a time (peak memory: the CLT
plus one layer file).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from tc_circuits.coders.clt import CLTConfig, CrossLayerTranscoder
from tc_circuits.fileio import atomic_write
from tc_circuits.formats._common import tl_model_name
from tc_circuits.formats.circuit_tracer import _relative, _site
from tc_circuits.models.sites import Site

CONFIG_FILE = "config.yaml"
MODEL_KIND = "cross_layer_transcoder"
_ENC = re.compile(r"^W_enc_(\d+)\.safetensors$")


def is_circuit_tracer_clt(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a circuit-tracer folder whose ``config.yaml`` says ``model_kind: cross_layer_transcoder``."""
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        raw = yaml.safe_load(cfg.read_text())
    except yaml.YAMLError:
        return False
    return isinstance(raw, dict) and raw.get("model_kind") == MODEL_KIND


class CircuitTracerCLTFiles:
    """A circuit-tracer CLT folder, opened lazily (nothing but shapes is read on construction)."""

    def __init__(self, path: str | os.PathLike, *, processing: dict[str, bool] | None = None):
        """``processing``: the TransformerLens weight processing the CLT assumes (the files do not say)."""
        self.root = Path(path)
        cfg_path = self.root / CONFIG_FILE
        if not cfg_path.is_file():
            raise FileNotFoundError(f"no circuit-tracer {CONFIG_FILE} in {path}")
        try:
            raw = yaml.safe_load(cfg_path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"corrupted {cfg_path}: {err}") from err
        if not isinstance(raw, dict) or raw.get("model_kind") != MODEL_KIND:
            raise ValueError(f"{cfg_path}: model_kind must be {MODEL_KIND!r}, got {raw.get('model_kind') if isinstance(raw, dict) else raw!r}")
        self.raw = raw
        layers = sorted(int(m.group(1)) for f in self.root.iterdir() if (m := _ENC.match(f.name)))
        if not layers or layers != list(range(len(layers))):
            raise ValueError(f"{self.root}: expected W_enc_0..W_enc_{{N-1}}.safetensors, found layers {layers}")
        self.n_layers = len(layers)
        for i in layers:
            if not self._file("W_dec", i).is_file():
                raise FileNotFoundError(f"{self.root}: W_dec_{i}.safetensors missing")
        with self._open("W_enc", 0) as f:
            keys = set(f.keys())
            self.n_latents, self.d_model = f.get_slice("W_enc_0").get_shape()
            self.dtype = f.get_tensor("b_enc_0").dtype
        self.jumprelu = "threshold_0" in keys
        self.skip = "W_skip_0" in keys
        act = raw.get("activation")
        if act in ("jump_relu", "jumprelu") and not self.jumprelu:
            raise ValueError(f"{cfg_path}: activation is JumpReLU but W_enc_0.safetensors holds no threshold_0")
        self.activation = "jumprelu" if self.jumprelu else {None: "relu", "relu": "relu", "topk": "topk"}.get(act, "?")
        if self.activation == "?":
            raise ValueError(f"{cfg_path}: unsupported activation {act!r} for a CLT")
        self.k = raw.get("k") if self.activation == "topk" else None
        src = str(cfg_path)
        in_hook = str(raw.get("feature_input_hook", "ln2.hook_normalized"))
        if in_hook == "mlp.hook_in":
            raise ValueError(
                f"{cfg_path}: feature_input_hook 'mlp.hook_in' is circuit-tracer's LayerNorm output with "
                "its gain and bias; folding them into a CLT's encoders is not supported (CLTs reading "
                "'ln2.hook_normalized' or another TransformerLens hook load as they are)"
            )
        self.input_site = _site(in_hook, 0, src)
        self.output_site = _site(str(raw.get("feature_output_hook", "mlp.hook_out")), 0, src)
        self.processing = dict(processing or {})

    def _file(self, kind: str, i: int) -> Path:
        return self.root / f"{kind}_{i}.safetensors"

    def _open(self, kind: str, i: int):
        try:
            return safe_open(str(self._file(kind, i)), framework="pt", device="cpu")
        except (SafetensorError, OSError) as err:
            raise ValueError(f"corrupted or truncated safetensors file {self._file(kind, i)}: {err}") from err

    def _get(self, f: Any, name: str, shape: tuple[int, ...], source: str) -> Tensor:
        try:
            t = f.get_tensor(name)
        except (SafetensorError, KeyError) as err:
            raise ValueError(f"{source}: missing tensor {name}") from err
        if tuple(t.shape) != shape:
            raise ValueError(f"{source}: tensor {name} has shape {tuple(t.shape)}, expected {shape}")
        return t

    def encoder(self, i: int) -> dict[str, Tensor]:
        """Layer ``i``'s encoder file: ``W_enc [d, n]`` (ours, transposed), ``b_enc``, ``b_dec`` (+ ``threshold``, ``W_skip``)."""
        n, d, src = self.n_latents, self.d_model, str(self._file("W_enc", i))
        with self._open("W_enc", i) as f:
            out = {
                "W_enc": self._get(f, f"W_enc_{i}", (n, d), src).T.contiguous(),
                "b_enc": self._get(f, f"b_enc_{i}", (n,), src),
                "b_dec": self._get(f, f"b_dec_{i}", (d,), src),
            }
            if self.jumprelu:
                out["threshold"] = self._get(f, f"threshold_{i}", (n,), src)
            if self.skip:
                out["W_skip"] = self._get(f, f"W_skip_{i}", (d, d), src)
        return out

    def decoder_rows(self, i: int, ids: Tensor | list[int] | None = None) -> Tensor:
        """Rows ``ids`` of ``W_dec_{i}`` (``[len(ids), N - i, d]``), read without loading the whole file."""
        with self._open("W_dec", i) as f:
            sl = f.get_slice(f"W_dec_{i}")
            shape = tuple(sl.get_shape())
            expected = (self.n_latents, self.n_layers - i, self.d_model)
            if shape != expected:
                raise ValueError(f"{self._file('W_dec', i)}: W_dec_{i} has shape {shape}, expected {expected}")
            if ids is None:
                return sl[:]
            ids = torch.as_tensor(ids, dtype=torch.long)
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.n_latents):
                raise ValueError(f"decoder row ids must be in [0, {self.n_latents}), got {ids.tolist()}")
            return torch.stack([sl[int(r) : int(r) + 1][0] for r in ids]) if ids.numel() else torch.zeros(0, *expected[1:])

    def config(self) -> CLTConfig:
        """The :class:`CLTConfig` the folder describes."""
        return CLTConfig(
            n_layers=self.n_layers, d_in=self.d_model, d_out=self.d_model, n_latents=self.n_latents,
            activation=self.activation, k=self.k, skip=self.skip,
            input_kind=self.input_site.kind, output_kind=self.output_site.kind,
            model_name=tl_model_name(self.raw.get("model_name")), weight_processing=self.processing,
            extra={"source_format": "circuit-tracer"},
        )

    def to_clt(self) -> CrossLayerTranscoder:
        """Read every layer into a :class:`CrossLayerTranscoder` (one file at a time)."""
        clt = CrossLayerTranscoder(self.config(), dtype=self.dtype)
        with torch.no_grad():
            for i in range(self.n_layers):
                enc = self.encoder(i)
                clt.W_enc[i].copy_(enc["W_enc"])
                clt.b_enc[i].copy_(enc["b_enc"])
                clt.b_dec[i].copy_(enc["b_dec"])
                if clt.log_threshold is not None:
                    thr = enc["threshold"]
                    if torch.isnan(thr).any() or (thr < 0).any():
                        raise ValueError(f"{self._file('W_enc', i)}: JumpReLU thresholds must be >= 0")
                    clt.log_threshold[i].copy_(thr.log())
                if clt.W_skip is not None:
                    clt.W_skip[i].copy_(enc["W_skip"])
                clt.W_dec[i].copy_(self.decoder_rows(i))
        return clt.eval()


def load_circuit_tracer_clt(path: str | os.PathLike, *, processing: dict[str, bool] | None = None) -> CrossLayerTranscoder:
    """A circuit-tracer CLT folder as a :class:`CrossLayerTranscoder` (see :class:`CircuitTracerCLTFiles`)."""
    return CircuitTracerCLTFiles(path, processing=processing).to_clt()


def save_circuit_tracer_clt(
    clt: CrossLayerTranscoder, path: str | os.PathLike, *, model_name: str | None = None, allow_topk: bool = False
) -> Path:
    """Write ``clt`` in circuit-tracer's CLT layout (plus the ``W_skip_{i}`` / TopK extensions).

    ``allow_topk``: write a TopK CLT (``activation: topk`` + ``k``, read back by this module);
    circuit-tracer's own CLT loader would read it as ReLU, so it is refused by default.
    """
    c = clt.cfg
    if c.activation == "topk" and not allow_topk:
        raise ValueError(
            "refusing to write a TopK CLT for circuit-tracer: its CrossLayerTranscoder knows only ReLU and "
            "JumpReLU and would read it as ReLU, silently wrong; pass allow_topk=True to write it anyway "
            "(tc_circuits reads it back exactly)"
        )
    if c.d_in != c.d_out:
        raise ValueError(f"circuit-tracer CLTs read and write d_model; this CLT has d_in={c.d_in}, d_out={c.d_out}")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(c.n_layers):
        enc = {
            f"W_enc_{i}": clt.W_enc[i].detach().T.contiguous(),
            f"b_enc_{i}": clt.b_enc[i].detach().contiguous(),
            f"b_dec_{i}": clt.b_dec[i].detach().contiguous(),
        }
        if clt.log_threshold is not None:
            enc[f"threshold_{i}"] = clt.log_threshold[i].detach().exp().contiguous()
        if clt.W_skip is not None:
            enc[f"W_skip_{i}"] = clt.W_skip[i].detach().contiguous()
        dec = {f"W_dec_{i}": clt.W_dec[i].detach().contiguous()}
        atomic_write(root / f"W_enc_{i}.safetensors", lambda p, t=enc: save_file(t, p))
        atomic_write(root / f"W_dec_{i}.safetensors", lambda p, t=dec: save_file(t, p))
    cfg: dict[str, Any] = {
        "model_name": model_name or c.model_name,
        "model_kind": MODEL_KIND,
        "feature_input_hook": _relative(Site(0, c.input_kind)),
        "feature_output_hook": "mlp.hook_out" if c.output_kind == "mlp_out" else _relative(Site(0, c.output_kind)),
        "activation": {"jumprelu": "jump_relu"}.get(c.activation, c.activation),
    }
    if c.activation == "topk":
        cfg["k"] = c.k
    text = yaml.safe_dump(cfg, sort_keys=False)
    atomic_write(root / CONFIG_FILE, lambda p: Path(p).write_text(text))
    return root


__all__ = [
    "CircuitTracerCLTFiles",
    "is_circuit_tracer_clt",
    "load_circuit_tracer_clt",
    "save_circuit_tracer_clt",
]
