"""The ``CrossLayerTranscoder`` (CLT): features read one layer's MLP input and write every later MLP output.

For ``n_layers`` layers ``0..N-1`` (TransformerLens row-vector convention)::

    a_L      = act_L(x_L @ W_enc[L] + b_enc[L])                 x_L = mlp_in of layer L
    y_hat_L' = sum_{L <= L'} a_L @ W_dec[L][:, L' - L] + b_dec[L'] (+ x_L' @ W_skip[L'])

Shapes: ``W_enc [N, d_in, n]``, ``b_enc [N, n]``, ``W_dec[L] [n, N - L, d_out]`` (one tensor per
source layer, as in circuit-tracer), ``b_dec [N, d_out]``, ``W_skip [N, d_in, d_out]``
(optional), ``log_threshold [N, n]`` (JumpReLU). **TopK is per layer**: each layer's encoder keeps
its own ``k`` largest pre-activations, so a token has at most ``N * k`` active features in all.

Parameter count (and memory): ``N (d_in n + n + d_out) + n d_out N (N + 1) / 2 (+ N d_in d_out)``;
the decoders dominate: **O(N^2 n d)**. Training in float32 with Adam holds four copies (weights,
gradients, two moments): ``16 * n * d * N (N + 1) / 2`` bytes of decoders (the organism, N = 3,
n = 1024, d = 128: 12.6 MB; GPT-2 small, N = 12, n = 24576, d = 768: 23 GB).

A CLT with ``N = 1`` is exactly a :class:`~tc_circuits.coders.transcoder.Transcoder`.

Everything downstream (splice, attribution, interventions) sees a CLT as ``{layer: CLTLayer}``
(:meth:`CrossLayerTranscoder.layers`): each :class:`CLTLayer` has the per-layer encoder,
``b_dec`` / ``W_skip`` of its output layer, and ``decoders = {L': W_dec[L -> L']}``. A per-layer
``Transcoder`` has the same protocol with ``decoders = {L: W_dec}``;
:func:`decode_output` sums the contributions of all layers' latents into one output layer.

Checkpoints: a folder with ``clt_cfg.json`` and ``clt.safetensors``, written atomically; same
checks as ``Transcoder`` on load (names, shapes, model name, d_model, weight processing).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from jaxtyping import Float
from safetensors.torch import save_file
from torch import Tensor, nn

from tc_circuits.coders.activations import apply_activation
from tc_circuits.coders.config_base import CoderConfigMixin
from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig
from tc_circuits.fileio import atomic_write_many
from tc_circuits.models.model_info import model_signature
from tc_circuits.models.sites import Site
from tc_circuits.validate import CHECKSUM_KEY, check_finite, load_safetensors, read_checkpoint_config, tensors_digest

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

CLT_CONFIG_NAME = "clt_cfg.json"
CLT_WEIGHTS_NAME = "clt.safetensors"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CLTConfig(CoderConfigMixin):
    """Shape, activation and provenance of a cross-layer transcoder."""

    n_layers: int
    """Number of layers ``N``: features read ``mlp_in`` of layers 0..N-1 and write ``mlp_out``."""
    d_in: int
    """Width of each layer's input (d_model for ``ln2.hook_normalized``)."""
    d_out: int
    """Width of each layer's output (d_model for ``hook_mlp_out``)."""
    n_latents: int
    """Latents per layer (the CLT has ``n_layers * n_latents`` in all)."""
    activation: str = "topk"
    """``"topk"`` (per layer), ``"relu"`` (trained with L1) or ``"jumprelu"``."""
    k: int | None = 16
    """Active latents per token *per layer* for TopK."""
    skip: bool = False
    """Add an affine skip ``x_L @ W_skip[L]`` at every layer."""
    input_kind: str = "mlp_in"
    """Site kind each encoder reads (at its own layer)."""
    output_kind: str = "mlp_out"
    """Site kind each output layer reconstructs."""
    jumprelu_init_threshold: float = 1e-3
    """Initial JumpReLU threshold."""
    jumprelu_bandwidth: float = 1e-3
    """Width of the rectangle kernel of the JumpReLU straight-through estimator."""
    model_name: str | None = None
    """Name of the model the CLT was trained on (checked on load)."""
    model_d_model: int | None = None
    """d_model of that model (checked on load)."""
    weight_processing: dict[str, bool] = field(default_factory=dict)
    """TransformerLens weight-processing flags of that model (checked on load)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (training config, source format, ...)."""

    WHAT: ClassVar[str] = "CLT config"

    def __post_init__(self) -> None:
        self._check_common()
        Site(0, self.input_kind)  # validates the kinds (ValueError naming a bad one)
        Site(0, self.output_kind)

    def layer_config(self, layer: int) -> TranscoderConfig:
        """The :class:`TranscoderConfig` of layer ``layer``'s encoder (its sites, widths, model)."""
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} out of range for a CLT of {self.n_layers} layers")
        return TranscoderConfig(
            d_in=self.d_in, d_out=self.d_out, n_latents=self.n_latents,
            input_site=Site(layer, self.input_kind).hook_name,
            output_site=Site(layer, self.output_kind).hook_name,
            activation=self.activation, k=self.k if self.activation == "topk" else None, skip=self.skip,
            jumprelu_init_threshold=self.jumprelu_init_threshold,
            jumprelu_bandwidth=self.jumprelu_bandwidth, model_name=self.model_name,
            model_d_model=self.model_d_model, weight_processing=dict(self.weight_processing),
            extra={"cross_layer": True},
        )

    @classmethod
    def for_model(cls, model: HookedTransformer, n_latents: int, *, skip: bool = True, **kwargs: Any) -> CLTConfig:
        """A CLT over every layer of ``model`` (``mlp_in`` -> ``mlp_out``), with its signature."""
        sig = model_signature(model)
        for L in range(int(model.cfg.n_layers)):
            Site(L, "mlp_in").check(model)
            Site(L, "mlp_out").check(model)
        return cls(
            n_layers=int(model.cfg.n_layers), d_in=sig["d_model"], d_out=sig["d_model"],
            n_latents=n_latents, skip=skip, model_name=sig["model_name"], model_d_model=sig["d_model"],
            weight_processing=sig["weight_processing"], **kwargs,
        )


class CLTOutput(NamedTuple):
    """Result of :meth:`CrossLayerTranscoder.forward` (lists indexed by layer)."""

    outputs: list[Tensor]
    """Reconstruction of each layer's output, ``[..., d_out]``."""
    latents: list[Tensor]
    """Latent activations of each layer's encoder, ``[..., n_latents]``."""
    pre_acts: list[Tensor]
    """Encoder pre-activations of each layer, ``[..., n_latents]``."""


class CLTLayer:
    """Layer ``L`` of a CLT with the per-layer transcoder protocol (views of the CLT's tensors).

    ``W_enc``, ``b_enc``, ``log_threshold``: layer L's encoder; ``b_dec``, ``W_skip``: the
    bias and skip of output layer L; ``decoders``: ``{L': W_dec[L -> L']}`` for ``L' >= L``;
    ``W_dec``: the decoder into layer L itself. It cannot reconstruct alone (its output layer
    also receives earlier layers' latents): use :func:`decode_output` or the CLT itself.
    """

    def __init__(self, clt: CrossLayerTranscoder, layer: int):
        self.clt, self.layer = clt, layer
        self.cfg = clt.cfg.layer_config(layer)
        self.W_enc = clt.W_enc[layer]
        self.b_enc = clt.b_enc[layer]
        self.b_dec = clt.b_dec[layer]
        self.W_skip = None if clt.W_skip is None else clt.W_skip[layer]
        self.log_threshold = None if clt.log_threshold is None else clt.log_threshold[layer]
        dec = clt.W_dec[layer]
        self.decoders = {layer + j: dec[:, j] for j in range(dec.shape[1])}
        self.W_dec = self.decoders[layer]

    @property
    def threshold(self) -> Tensor | None:
        return None if self.log_threshold is None else self.log_threshold.exp()

    def pre_acts(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... n_latents"]:
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(f"CLT layer {self.layer} expects inputs of width {self.cfg.d_in}, got {tuple(x.shape)}")
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: Float[Tensor, "... n_latents"]) -> Float[Tensor, "... n_latents"]:
        return apply_activation(
            self.cfg.activation, pre, k=self.cfg.k, threshold=self.threshold, bandwidth=self.cfg.jumprelu_bandwidth
        )

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... n_latents"]:
        return self.activate(self.pre_acts(x))

    def skip_out(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        if self.W_skip is None:
            return x.new_zeros(*x.shape[:-1], self.cfg.d_out)
        return x @ self.W_skip

    def check_compatible(self, model: HookedTransformer) -> None:
        self.clt.check_compatible(model)

    def named_parameters(self) -> list[tuple[str, Tensor]]:
        """Layer L's tensors (what content hashes read): encoder, all its decoders, bias, skip, threshold."""
        out = [("W_enc", self.W_enc), ("b_enc", self.b_enc), ("W_dec", self.clt.W_dec[self.layer]), ("b_dec", self.b_dec)]
        if self.W_skip is not None:
            out.append(("W_skip", self.W_skip))
        if self.log_threshold is not None:
            out.append(("log_threshold", self.log_threshold))
        return out

    def __repr__(self) -> str:
        return f"CLTLayer({self.layer} of {self.clt.cfg.n_layers}, n_latents={self.cfg.n_latents})"


CoderLayer = Transcoder | CLTLayer


#: With ``sparse=True``, latent blocks with at most this share of non-zeros decode as a sparse matmul.
SPARSE_DECODE_DENSITY = 0.1


def _latents_times(z: Tensor, W: Tensor, sparse: bool) -> Tensor:
    """``z @ W``; as a sparse matmul when ``sparse`` and ``z`` is mostly zeros (never inside autograd)."""
    tracked = torch.is_grad_enabled() and (z.requires_grad or W.requires_grad)
    if sparse and not tracked and z.ndim == 2 and z.dtype in (torch.float32, torch.float64):
        if int(torch.count_nonzero(z)) <= SPARSE_DECODE_DENSITY * z.numel():
            return torch.sparse.mm(z.to_sparse(), W)
    return z @ W


def decode_output(
    coders: Mapping[int, CoderLayer],
    out_layer: int,
    latents: Mapping[int, Tensor],
    x: Tensor | None,
    *,
    sparse: bool = False,
) -> Tensor:
    """Output of layer ``out_layer``: ``sum_L latents[L] @ decoders_L[out_layer] + b_dec (+ x @ W_skip)``.

    ``coders`` maps layers to :class:`Transcoder` or :class:`CLTLayer`; ``latents`` holds the
    latents of (at least) every layer that writes ``out_layer``; ``x`` is ``out_layer``'s input
    (for the skip). For one per-layer transcoder this is exactly ``Transcoder.decode``.
    ``sparse=True`` (no-grad callers: the attribution engine) decodes mostly-zero latents with
    a sparse matmul: the same sum, in another order (float rounding only), ~10x faster at
    k 32 of 24,576.
    """
    out = None
    for L in sorted(latents):
        W = decoder_of(coders[L]).get(out_layer)
        if W is not None:
            term = _latents_times(latents[L], W, sparse)
            out = term if out is None else out + term
    own = coders[out_layer]
    if out is None:
        raise ValueError(f"no latents given that write layer {out_layer}")
    out = out + own.b_dec
    if own.W_skip is not None:
        if x is None:
            raise ValueError("a skip coder needs its input x to decode")
        out = out + x @ own.W_skip
    return out


def decoder_of(coder: CoderLayer) -> dict[int, Tensor]:
    """``{output layer: decoder [n, d_out]}`` of one coder layer (a Transcoder writes only its own)."""
    if isinstance(coder, CLTLayer):
        return coder.decoders
    return {coder.cfg.layer: coder.W_dec}


def writers_of(coders: Mapping[int, CoderLayer], out_layer: int) -> list[int]:
    """Layers whose latents write ``out_layer`` (ascending)."""
    return [L for L in sorted(coders) if out_layer in decoder_of(coders[L])]


class CrossLayerTranscoder(nn.Module):
    """Cross-layer transcoder: ``N`` encoders, ``N (N + 1) / 2`` decoder blocks (see the module doc)."""

    def __init__(self, cfg: CLTConfig, *, dtype: torch.dtype = torch.float32, seed: int = 0, init: bool = True):
        """Build the CLT; ``seed`` seeds a private generator for the encoders' init.
        ``init=False`` skips it (for a loader that fills every parameter next)."""
        super().__init__()
        self.cfg = cfg
        N, d_in, d_out, n = cfg.n_layers, cfg.d_in, cfg.d_out, cfg.n_latents
        self.W_enc = nn.Parameter(torch.empty(N, d_in, n, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(N, n, dtype=dtype))
        self.W_dec = nn.ParameterList([nn.Parameter(torch.zeros(n, N - L, d_out, dtype=dtype)) for L in range(N)])
        self.b_dec = nn.Parameter(torch.zeros(N, d_out, dtype=dtype))
        self.W_skip = nn.Parameter(torch.zeros(N, d_in, d_out, dtype=dtype)) if cfg.skip else None
        self.log_threshold = (
            nn.Parameter(torch.full((N, n), math.log(cfg.jumprelu_init_threshold), dtype=dtype))
            if cfg.activation == "jumprelu" else None
        )
        if init:
            self.reset_parameters(torch.Generator().manual_seed(seed))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Kaiming-uniform encoders (per layer, like ``Transcoder``), zero decoders / skip / biases."""
        bound = 1.0 / math.sqrt(self.cfg.d_in)
        with torch.no_grad():
            for L in range(self.cfg.n_layers):
                r = torch.rand(self.W_enc.shape[1:], generator=generator, dtype=self.W_enc.dtype)
                self.W_enc[L].copy_((r * 2 - 1) * bound)
            self.b_enc.zero_()
            for W in self.W_dec:
                W.zero_()
            self.b_dec.zero_()
            if self.W_skip is not None:
                self.W_skip.zero_()

    @torch.no_grad()
    def init_from_data(self, ys: list[Float[Tensor, "batch d_out"]]) -> None:
        """Set ``b_dec[L]`` to the mean of layer L's outputs ``ys[L]``."""
        if len(ys) != self.cfg.n_layers:
            raise ValueError(f"expected outputs of {self.cfg.n_layers} layers, got {len(ys)}")
        for L, y in enumerate(ys):
            if y.ndim != 2 or y.shape[-1] != self.cfg.d_out:
                raise ValueError(f"layer {L}: expected outputs [batch, {self.cfg.d_out}], got {tuple(y.shape)}")
            self.b_dec[L].copy_(y.float().mean(0).to(self.b_dec.dtype))

    def layer(self, layer: int) -> CLTLayer:
        """Layer ``layer`` as a :class:`CLTLayer` (views of the current tensors)."""
        if not 0 <= layer < self.cfg.n_layers:
            raise ValueError(f"layer {layer} out of range for a CLT of {self.cfg.n_layers} layers")
        return CLTLayer(self, layer)

    def layers(self) -> dict[int, CLTLayer]:
        """``{layer: CLTLayer}`` for every layer: what splice / attribute / intervene accept."""
        return {L: CLTLayer(self, L) for L in range(self.cfg.n_layers)}

    def forward(self, xs: list[Float[Tensor, "... d_in"]] | Float[Tensor, "layer ... d_in"]) -> CLTOutput:
        """Encode every layer's input ``xs[L]`` and reconstruct every layer's output."""
        N = self.cfg.n_layers
        if len(xs) != N:
            raise ValueError(f"a CLT of {N} layers needs {N} inputs, got {len(xs)}")
        views = self.layers()
        pres = [views[L].pre_acts(xs[L]) for L in range(N)]
        lats = [views[L].activate(pres[L]) for L in range(N)]
        by_layer = dict(enumerate(lats))
        outs = [decode_output(views, L, {j: by_layer[j] for j in range(L + 1)}, xs[L]) for L in range(N)]
        return CLTOutput(outs, lats, pres)

    # ----------------------------------------------------------------- model checks
    def check_compatible(self, model: HookedTransformer) -> None:
        """Raise ``ValueError`` if this CLT was not made for ``model`` (sites, widths, name, processing)."""
        if self.cfg.n_layers > int(model.cfg.n_layers):
            raise ValueError(f"CLT spans {self.cfg.n_layers} layers, the model has {model.cfg.n_layers}")
        # every layer shares the same widths and provenance: layer 0's check covers them
        Transcoder.check_compatible(_CheckProxy(self.cfg.layer_config(0)), model)  # type: ignore[arg-type]
        for L in range(1, self.cfg.n_layers):
            Site(L, self.cfg.input_kind).check(model)
            Site(L, self.cfg.output_kind).check(model)

    # ----------------------------------------------------------------- save / load
    def state_tensors(self) -> dict[str, Tensor]:
        """The parameters as a flat dict of contiguous tensors (``W_dec.{L}`` per source layer)."""
        return {name: p.detach().contiguous() for name, p in self.named_parameters()}

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``clt_cfg.json`` + ``clt.safetensors`` into folder ``path``, atomically."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = self.state_tensors()
        meta = {"format_version": str(FORMAT_VERSION), "kind": "cross_layer_transcoder",
                CHECKSUM_KEY: tensors_digest(tensors)}
        cfg_json = json.dumps({"format_version": FORMAT_VERSION, **self.cfg.to_dict()}, indent=2, sort_keys=True)
        atomic_write_many(
            {
                path / CLT_WEIGHTS_NAME: lambda p: save_file(tensors, p, metadata=meta),
                path / CLT_CONFIG_NAME: lambda p: Path(p).write_text(cfg_json),
            }
        )
        return path

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, model: HookedTransformer | None = None, device: str | torch.device = "cpu"
    ) -> CrossLayerTranscoder:
        """Load a checkpoint folder; with ``model``, also check it fits that model."""
        raw, weights_path = read_checkpoint_config(path, CLT_CONFIG_NAME, CLT_WEIGHTS_NAME, "CLT checkpoint")
        raw.pop("format_version", None)
        try:
            cfg = CLTConfig.from_dict(raw)
        except (ValueError, TypeError) as err:
            raise ValueError(f"invalid CLT config {Path(path) / CLT_CONFIG_NAME}: {err}") from err
        # clear errors for empty / garbled files, the content hash (files written since it was
        # recorded), and NaN / infinite weights: as Transcoder.load
        tensors = load_safetensors(weights_path, "CLT weights", device=str(device))
        check_finite(tensors, str(weights_path))
        dtype = tensors["W_enc"].dtype if "W_enc" in tensors else torch.float32
        clt = cls(cfg, dtype=dtype, init=False).to(device)
        clt.load_tensors(tensors, source=str(weights_path))
        if model is not None:
            clt.check_compatible(model)
        return clt

    def load_tensors(self, tensors: Mapping[str, Tensor], *, source: str = "tensors") -> None:
        """Copy ``tensors`` into the parameters, checking names and shapes exactly."""
        Transcoder.load_tensors(self, dict(tensors), source=source)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        c = self.cfg
        return (
            f"n_layers={c.n_layers}, n_latents={c.n_latents} per layer, {c.activation}, k={c.k} per layer, "
            f"skip={c.skip}"
        )


class _CheckProxy:
    """Just enough of a Transcoder for :meth:`Transcoder.check_compatible`."""

    def __init__(self, cfg: TranscoderConfig):
        self.cfg = cfg


def layer_coders(coders: Any) -> dict[int, CoderLayer]:
    """``{layer: Transcoder | CLTLayer}`` from a CLT or a ``{layer: Transcoder}`` mapping."""
    if isinstance(coders, CrossLayerTranscoder):
        return coders.layers()
    return {int(k): v for k, v in coders.items()}


def clt_of(coders: Mapping[int, Any]) -> CrossLayerTranscoder | None:
    """The CLT behind ``{layer: CLTLayer}`` (None for per-layer transcoders); mixing is an error."""
    clts = {id(v.clt): v.clt for v in coders.values() if isinstance(v, CLTLayer)}
    if not clts:
        return None
    if len(clts) > 1 or len(clts) and any(not isinstance(v, CLTLayer) for v in coders.values()):
        raise ValueError("cannot mix layers of several CLTs, or CLT layers with per-layer transcoders")
    return next(iter(clts.values()))


def clt_from_transcoder(tc: Transcoder) -> CrossLayerTranscoder:
    """A one-layer CLT equal to the per-layer transcoder ``tc`` (same weights; layer index 0).

    Only for layer-0 transcoders (a CLT's layers start at 0).
    """
    c = tc.cfg
    if c.layer != 0 or c.in_site.layer != 0:
        raise ValueError(f"a one-layer CLT covers layer 0; this transcoder maps {c.input_site} -> {c.output_site}")
    cfg = CLTConfig(
        n_layers=1, d_in=c.d_in, d_out=c.d_out, n_latents=c.n_latents, activation=c.activation, k=c.k,
        skip=c.skip, input_kind=c.in_site.kind, output_kind=c.out_site.kind,
        jumprelu_init_threshold=c.jumprelu_init_threshold, jumprelu_bandwidth=c.jumprelu_bandwidth,
        model_name=c.model_name, model_d_model=c.model_d_model, weight_processing=dict(c.weight_processing),
    )
    clt = CrossLayerTranscoder(cfg, dtype=tc.W_enc.dtype, init=False)  # every parameter is loaded below
    t = {"W_enc": tc.W_enc[None], "b_enc": tc.b_enc[None], "W_dec.0": tc.W_dec[:, None], "b_dec": tc.b_dec[None]}
    if tc.W_skip is not None:
        t["W_skip"] = tc.W_skip[None]
    if tc.log_threshold is not None:
        t["log_threshold"] = tc.log_threshold[None]
    clt.load_tensors({k: v.detach() for k, v in t.items()})
    return clt


__all__ = [
    "CLTConfig",
    "CLTLayer",
    "CLTOutput",
    "CrossLayerTranscoder",
    "clt_from_transcoder",
    "clt_of",
    "decode_output",
    "decoder_of",
    "layer_coders",
    "writers_of",
]
