"""Factorised feature attribution: linearisation, the engine, targets, virtual weights."""

from tc_circuits.attribution.engine import (
    AttributionConfig,
    AttributionExactnessError,
    attribute,
    exactness_deviation,
)
from tc_circuits.attribution.linearise import LinearisedModel
from tc_circuits.attribution.virtual_weights import (
    de_embeddings,
    logit_effects,
    ov_virtual_weights,
    top_tokens,
    virtual_weights,
)
from tc_circuits.attribution.targets import (
    Target,
    default_logit_targets,
    direction_target,
    logit_diff_target,
    logit_target,
)

__all__ = [
    "AttributionConfig",
    "AttributionExactnessError",
    "LinearisedModel",
    "Target",
    "attribute",
    "default_logit_targets",
    "direction_target",
    "exactness_deviation",
    "logit_diff_target",
    "logit_target",
    "de_embeddings",
    "logit_effects",
    "ov_virtual_weights",
    "top_tokens",
    "virtual_weights",
]
