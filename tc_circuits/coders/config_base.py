"""What the configs of every dictionary (:class:`TranscoderConfig`, :class:`CLTConfig`) share.

Validation of the shape and activation fields, strict JSON types on load (bools are bools,
ints are not floats), copy-with-changes and the dict round trip. Each config is a frozen
dataclass that mixes in :class:`CoderConfigMixin` and names itself in ``WHAT`` for messages.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from tc_circuits.coders.activations import ACTIVATIONS
from tc_circuits.validate import finite_float, strict_bool, strict_int

_POSITIVE_INTS = ("n_layers", "d_in", "d_out", "n_latents")
_STRINGS = ("input_site", "output_site", "input_kind", "output_kind", "activation")


def check_field_types(d: dict[str, Any], src: str) -> None:
    """JSON types of config fields found in ``d`` (``src`` names the config in messages)."""
    for name in _POSITIVE_INTS:
        if name in d:
            strict_int(d[name], name, src, minimum=1)
    if "skip" in d:
        strict_bool(d["skip"], "skip", src)
    if d.get("k") is not None:
        strict_int(d["k"], "k", src)
    for name in ("jumprelu_init_threshold", "jumprelu_bandwidth"):
        if name in d:
            finite_float(d[name], name, src)
    if d.get("model_d_model") is not None:
        strict_int(d["model_d_model"], "model_d_model", src, minimum=1)
    for name in _STRINGS:
        if name in d and not isinstance(d[name], str):
            raise ValueError(f"{src}: {name} must be a string, got {d[name]!r}")
    if d.get("model_name") is not None and not isinstance(d["model_name"], str):
        raise ValueError(f"{src}: model_name must be a string or null, got {d['model_name']!r}")
    wp = d.get("weight_processing", {})
    if not isinstance(wp, dict):
        raise ValueError(f"{src}: weight_processing must be an object of bools, got {wp!r}")
    for key, value in wp.items():
        strict_bool(value, f"weight_processing[{key!r}]", src)
    if not isinstance(d.get("extra", {}), dict):
        raise ValueError(f"{src}: extra must be an object, got {d.get('extra')!r}")


class CoderConfigMixin:
    """Shared methods of the dictionary configs (frozen dataclasses)."""

    WHAT: ClassVar[str] = "coder config"

    def _check_common(self) -> None:
        """Positive widths, a known activation, ``1 <= k <= n_latents`` for TopK."""
        for name in _POSITIVE_INTS:
            value = getattr(self, name, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        check_field_types(dataclasses.asdict(self), self.WHAT)  # type: ignore[call-overload]
        activation, k, n = self.activation, self.k, self.n_latents  # type: ignore[attr-defined]
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
        if activation == "topk" and (k is None or not 1 <= k <= n):
            raise ValueError(f"k must be in [1, n_latents={n}] for TopK, got k={k!r}")

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` applied (the original is never mutated)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """The config from a JSON object; unknown keys and wrong JSON types are errors."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown {cls.WHAT} keys: {sorted(unknown)}")
        check_field_types(data, cls.WHAT)  # before the constructor: clear messages for JSON values
        return cls(**data)
