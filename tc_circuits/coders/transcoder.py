"""The ``Transcoder`` module: a sparse, wide map from one hook site to another.

    f(x) = W_dec . act(W_enc x + b_enc) + W_skip x + b_dec

Conventions (TransformerLens style, activations are row vectors): ``W_enc`` is
``[d_in, n_latents]``, ``W_dec`` is ``[n_latents, d_out]``, ``W_skip`` is ``[d_in, d_out]``, so
``f(x) = act(x @ W_enc + b_enc) @ W_dec + x @ W_skip + b_dec``.

* Transcoder: input site ``blocks.L.ln2.hook_normalized``, output ``blocks.L.hook_mlp_out``.
* Skip transcoder: the same plus the affine skip ``x @ W_skip``.
* SAE: input site == output site.

Initialisation follows the skip-transcoder recipe: ``W_dec`` and ``W_skip`` start at zero and
``b_dec`` at the mean output (:meth:`Transcoder.init_from_data`), so the transcoder starts as a
constant function equal to the mean.

Checkpoints are a folder with ``cfg.json`` and ``weights.safetensors``, written atomically.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from jaxtyping import Float
from safetensors.torch import save_file
from torch import Tensor, nn

from tc_circuits.coders.activations import apply_activation
from tc_circuits.coders.config_base import CoderConfigMixin
from tc_circuits.fileio import atomic_write_many
from tc_circuits.models.model_info import model_signature
from tc_circuits.models.sites import Site
from tc_circuits.validate import (
    check_dtype_matches,
    check_finite,
    load_safetensors,
    read_checkpoint_config,
    CHECKSUM_KEY,
    tensors_digest,
)

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

CONFIG_NAME = "cfg.json"
WEIGHTS_NAME = "weights.safetensors"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TranscoderConfig(CoderConfigMixin):
    """Shape, activation and provenance of a transcoder."""

    d_in: int
    """Width of the input activation (d_model for ``ln2.hook_normalized``)."""
    d_out: int
    """Width of the output activation (d_model for ``hook_mlp_out``)."""
    n_latents: int
    """Number of latents (dictionary size)."""
    input_site: str = "blocks.0.ln2.hook_normalized"
    """TransformerLens hook name the transcoder reads."""
    output_site: str = "blocks.0.hook_mlp_out"
    """TransformerLens hook name the transcoder reconstructs (== input_site for an SAE)."""
    activation: str = "topk"
    """``"topk"``, ``"relu"`` (trained with an L1 penalty) or ``"jumprelu"``."""
    k: int | None = 32
    """Active latents per token for TopK (ignored by the other activations)."""
    skip: bool = False
    """Add an affine skip connection ``x @ W_skip``."""
    jumprelu_init_threshold: float = 1e-3
    """Initial JumpReLU threshold."""
    jumprelu_bandwidth: float = 1e-3
    """Width of the rectangle kernel of the JumpReLU straight-through estimator."""
    model_name: str | None = None
    """Name of the model the transcoder was trained on (checked on load)."""
    model_d_model: int | None = None
    """d_model of that model (checked on load)."""
    weight_processing: dict[str, bool] = field(default_factory=dict)
    """TransformerLens weight-processing flags of that model (checked on load)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (training config, source format, ...)."""

    WHAT: ClassVar[str] = "transcoder config"

    def __post_init__(self) -> None:
        self._check_common()
        # Validates both hook names (raises ValueError naming a bad one) and records them by
        # their HookedTransformer names, so a checkpoint names its sites the same on every
        # backend (a TransformerBridge's canonical names are accepted too).
        object.__setattr__(self, "input_site", Site.parse(self.input_site).hook_name)
        object.__setattr__(self, "output_site", Site.parse(self.output_site).hook_name)

    @property
    def in_site(self) -> Site:
        """The input :class:`Site`."""
        return Site.parse(self.input_site)

    @property
    def out_site(self) -> Site:
        """The output :class:`Site`."""
        return Site.parse(self.output_site)

    @property
    def layer(self) -> int:
        """Layer of the output site (the MLP this transcoder replaces)."""
        return self.out_site.layer

    @property
    def is_sae(self) -> bool:
        """True when input and output site coincide."""
        return self.input_site == self.output_site

    @classmethod
    def for_model(
        cls,
        model: HookedTransformer,
        layer: int,
        n_latents: int,
        *,
        kind: str = "transcoder",
        **kwargs: Any,
    ) -> TranscoderConfig:
        """Config for ``layer`` of ``model``.

        ``kind`` is ``"transcoder"``, ``"skip_transcoder"`` or ``"sae"`` (an SAE on the MLP
        output). Sites, widths and the model's signature are filled in from the model.
        """
        kinds = ("transcoder", "skip_transcoder", "sae")
        if kind not in kinds:
            raise ValueError(f"unknown kind {kind!r}; expected one of {kinds}")
        out_site = Site(layer, "mlp_out").check(model)
        in_site = out_site if kind == "sae" else Site(layer, "mlp_in").check(model)
        sig = model_signature(model)
        return cls(
            d_in=sig["d_model"],
            d_out=sig["d_model"],
            n_latents=n_latents,
            input_site=in_site.hook_name,
            output_site=out_site.hook_name,
            skip=kind == "skip_transcoder",
            model_name=sig["model_name"],
            model_d_model=sig["d_model"],
            weight_processing=sig["weight_processing"],
            **kwargs,
        )


class TranscoderOutput(NamedTuple):
    """Result of :meth:`Transcoder.forward`."""

    output: Tensor
    """Reconstruction of the output activation, ``[..., d_out]``."""
    latents: Tensor
    """Latent activations, ``[..., n_latents]`` (dense, mostly zeros)."""
    pre_acts: Tensor
    """Encoder pre-activations ``x @ W_enc + b_enc``, ``[..., n_latents]``."""


class Transcoder(nn.Module):
    """Sparse replacement for an MLP (or an SAE when input site == output site)."""

    def __init__(
        self, cfg: TranscoderConfig, *, dtype: torch.dtype = torch.float32, seed: int = 0, init: bool = True
    ):
        """Build the transcoder; ``seed`` seeds a private generator for the encoder's init
        (the global RNG is never touched). ``init=False`` leaves the parameters uninitialised
        (``torch.empty``) for a caller that loads every one of them next (the loaders: at
        24,576 x 768 the random init costs 0.2 s per layer)."""
        super().__init__()
        self.cfg = cfg
        d_in, d_out, n = cfg.d_in, cfg.d_out, cfg.n_latents
        new = torch.zeros if init else torch.empty
        self.W_enc = nn.Parameter(torch.empty(d_in, n, dtype=dtype))
        self.b_enc = nn.Parameter(new(n, dtype=dtype))
        self.W_dec = nn.Parameter(new(n, d_out, dtype=dtype))
        self.b_dec = nn.Parameter(new(d_out, dtype=dtype))
        self.W_skip = nn.Parameter(new(d_in, d_out, dtype=dtype)) if cfg.skip else None
        if cfg.activation == "jumprelu":
            self.log_threshold = nn.Parameter(
                torch.full((n,), math.log(cfg.jumprelu_init_threshold), dtype=dtype)
            )
        else:
            self.log_threshold = None
        if init:
            self.reset_parameters(torch.Generator().manual_seed(seed))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Kaiming-uniform encoder, zero decoder / skip / biases (a constant function)."""
        bound = 1.0 / math.sqrt(self.cfg.d_in)
        with torch.no_grad():
            self.W_enc.copy_(
                (torch.rand(self.W_enc.shape, generator=generator, dtype=self.W_enc.dtype) * 2 - 1)
                * bound
            )
            self.b_enc.zero_()
            self.W_dec.zero_()
            self.b_dec.zero_()
            if self.W_skip is not None:
                self.W_skip.zero_()

    @torch.no_grad()
    def init_from_data(self, y: Float[Tensor, "batch d_out"]) -> None:
        """Set ``b_dec`` to the mean of the output activations ``y``."""
        if y.ndim != 2 or y.shape[-1] != self.cfg.d_out:
            raise ValueError(f"expected output activations [batch, {self.cfg.d_out}], got {tuple(y.shape)}")
        self.b_dec.copy_(y.float().mean(0).to(self.b_dec.dtype))

    @property
    def threshold(self) -> Tensor | None:
        """JumpReLU threshold (``exp(log_threshold)``), or None."""
        return None if self.log_threshold is None else self.log_threshold.exp()

    def pre_acts(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... n_latents"]:
        """Encoder pre-activations ``x @ W_enc + b_enc``."""
        self._check_input(x)
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: Float[Tensor, "... n_latents"]) -> Float[Tensor, "... n_latents"]:
        """Apply the configured sparse activation to pre-activations."""
        return apply_activation(
            self.cfg.activation,
            pre,
            k=self.cfg.k,
            threshold=self.threshold,
            bandwidth=self.cfg.jumprelu_bandwidth,
        )

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... n_latents"]:
        """Latent activations of ``x``."""
        return self.activate(self.pre_acts(x))

    def decode(
        self, latents: Float[Tensor, "... n_latents"], x: Float[Tensor, "... d_in"] | None = None
    ) -> Float[Tensor, "... d_out"]:
        """``latents @ W_dec + b_dec`` (plus ``x @ W_skip`` when the skip path exists).

        A skip transcoder needs its input ``x`` to decode.
        """
        out = latents @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            if x is None:
                raise ValueError("a skip transcoder needs the input x to decode")
            out = out + x @ self.W_skip
        return out

    def skip_out(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        """The skip path ``x @ W_skip`` (zeros when there is no skip)."""
        if self.W_skip is None:
            return x.new_zeros(*x.shape[:-1], self.cfg.d_out)
        return x @ self.W_skip

    def forward(self, x: Float[Tensor, "... d_in"]) -> TranscoderOutput:
        pre = self.pre_acts(x)
        latents = self.activate(pre)
        return TranscoderOutput(self.decode(latents, x), latents, pre)

    def _check_input(self, x: Tensor) -> None:
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(
                f"transcoder expects inputs of width d_in={self.cfg.d_in}, got shape {tuple(x.shape)}"
            )

    # ----------------------------------------------------------------- model checks
    def check_compatible(self, model: HookedTransformer) -> None:
        """Raise ``ValueError`` if this transcoder was not made for ``model``.

        Checks the sites exist, the widths match, and (when recorded) the model name, d_model
        and TransformerLens weight-processing flags agree.
        """
        cfg = self.cfg
        in_site = cfg.in_site.check(model)
        cfg.out_site.check(model)
        sig = model_signature(model)
        if in_site.kind in ("mlp_pre", "mlp_post"):
            expected_in = int(model.cfg.d_mlp)
        else:
            expected_in = sig["d_model"]
        if cfg.d_in != expected_in:
            raise ValueError(
                f"transcoder d_in={cfg.d_in} does not match the model's width {expected_in} at {cfg.input_site}"
            )
        if cfg.d_out != sig["d_model"] and cfg.out_site.kind not in ("mlp_pre", "mlp_post"):
            raise ValueError(f"transcoder d_out={cfg.d_out} does not match d_model={sig['d_model']}")
        if cfg.model_d_model is not None and cfg.model_d_model != sig["d_model"]:
            raise ValueError(
                f"transcoder was trained on a model with d_model={cfg.model_d_model}, this one has {sig['d_model']}"
            )
        if cfg.model_name is not None and cfg.model_name != sig["model_name"]:
            raise ValueError(
                f"transcoder was trained on model {cfg.model_name!r}, not {sig['model_name']!r}"
            )
        mismatched = [
            f"{key}={bool(value)} (model: {key}={bool(actual)})"
            for key, value in sorted(cfg.weight_processing.items())
            if (actual := sig["weight_processing"].get(key)) is not None and bool(actual) != bool(value)
        ]
        if mismatched:
            raise ValueError(
                "weight processing mismatch: transcoder was trained with "
                + ", ".join(mismatched)
                + "; load the model with the same from_pretrained processing flags"
            )

    # ----------------------------------------------------------------- save / load
    def state_tensors(self) -> dict[str, Tensor]:
        """The parameters as a flat dict of contiguous tensors."""
        return {name: p.detach().contiguous() for name, p in self.named_parameters()}

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``cfg.json`` + ``weights.safetensors`` into folder ``path``, atomically.

        Both files are written to temporary names in the same folder and only then renamed
        into place, so an interrupted save never leaves a half-written or mixed checkpoint.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = self.state_tensors()
        meta = {"format_version": str(FORMAT_VERSION), CHECKSUM_KEY: tensors_digest(tensors)}
        cfg_json = json.dumps(
            {"format_version": FORMAT_VERSION, **self.cfg.to_dict()}, indent=2, sort_keys=True
        )
        # Both files are written to temporary names first and renamed together, so an
        # error never leaves new weights next to the old config (or the reverse).
        atomic_write_many(
            {
                path / WEIGHTS_NAME: lambda p: save_file(tensors, p, metadata=meta),
                path / CONFIG_NAME: lambda p: Path(p).write_text(cfg_json),
            }
        )
        return path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        model: HookedTransformer | None = None,
        device: str | torch.device = "cpu",
    ) -> Transcoder:
        """Load a checkpoint folder; with ``model``, also check it fits that model."""
        raw, weights_path = read_checkpoint_config(path, CONFIG_NAME, WEIGHTS_NAME, "transcoder checkpoint")
        raw.pop("format_version", None)
        try:
            cfg = TranscoderConfig.from_dict(raw)
        except (ValueError, TypeError) as err:
            raise ValueError(f"invalid transcoder config {Path(path) / CONFIG_NAME}: {err}") from err
        tensors = load_safetensors(weights_path, "transcoder weights", device=str(device))
        check_finite(tensors, str(weights_path))
        dtype = tensors["W_enc"].dtype if "W_enc" in tensors else torch.float32
        tc = cls(cfg, dtype=dtype, init=False).to(device)
        tc.load_tensors(tensors, source=str(weights_path))
        if model is not None:
            tc.check_compatible(model)
        return tc

    def load_tensors(self, tensors: dict[str, Tensor], *, source: str = "tensors") -> None:
        """Copy ``tensors`` into the parameters, checking names and shapes exactly."""
        expected = dict(self.named_parameters())
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{source}: missing tensors {missing}, unexpected tensors {unexpected}")
        with torch.no_grad():
            for name, param in expected.items():
                t = tensors[name]
                check_dtype_matches(name, t, param.dtype, source)
                if tuple(t.shape) != tuple(param.shape):
                    raise ValueError(
                        f"{source}: tensor {name} has shape {tuple(t.shape)}, config implies {tuple(param.shape)}"
                    )
                param.copy_(t)

    def extra_repr(self) -> str:
        c = self.cfg
        kind = "sae" if c.is_sae else ("skip_transcoder" if c.skip else "transcoder")
        return f"{kind}: {c.input_site} -> {c.output_site}, n_latents={c.n_latents}, {c.activation}, k={c.k}"


class TranscoderSet(dict):
    """``{layer: Transcoder}`` with folder save/load (``layer_{L}/`` sub-folders)."""

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        for layer, tc in sorted(self.items()):
            tc.save(path / f"layer_{layer}")
        return path

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, model: HookedTransformer | None = None
    ) -> TranscoderSet:
        path = Path(path)
        layers = sorted(
            int(p.name.split("_", 1)[1])
            for p in path.glob("layer_*")
            if p.is_dir() and p.name.split("_", 1)[1].isdigit()
        )
        if not layers:
            raise FileNotFoundError(f"no layer_* transcoder folders in {path}")
        return cls({layer: Transcoder.load(path / f"layer_{layer}", model=model) for layer in layers})
