"""Factorised feature attribution: linearisation, the engine, targets, virtual weights.

Names are imported on first use (PEP 562), so ``AttributionConfig`` (from the torch-free
:mod:`tc_circuits.attribution.config`) is cheap to read.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tc_circuits.attribution.config import AttributionConfig

_EXPORTS = {
    "AttributionExactnessError": "engine",
    "attribute": "engine",
    "exactness_deviation": "engine",
    "LinearisedModel": "linearise",
    "de_embeddings": "virtual_weights",
    "logit_effects": "virtual_weights",
    "ov_virtual_weights": "virtual_weights",
    "top_tokens": "virtual_weights",
    "virtual_weights": "virtual_weights",
    "Target": "targets",
    "default_logit_targets": "targets",
    "direction_target": "targets",
    "logit_diff_target": "targets",
    "logit_target": "targets",
}

if TYPE_CHECKING:  # pragma: no cover
    from tc_circuits.attribution.engine import AttributionExactnessError, attribute, exactness_deviation
    from tc_circuits.attribution.linearise import LinearisedModel
    from tc_circuits.attribution.targets import (
        Target,
        default_logit_targets,
        direction_target,
        logit_diff_target,
        logit_target,
    )
    from tc_circuits.attribution.virtual_weights import (
        de_embeddings,
        logit_effects,
        ov_virtual_weights,
        top_tokens,
        virtual_weights,
    )

__all__ = ["AttributionConfig", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tc_circuits.attribution' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tc_circuits.attribution.{module}"), name)
    globals()[name] = value
    return value
