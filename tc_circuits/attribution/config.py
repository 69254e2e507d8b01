"""``AttributionConfig``: the engine's options (no torch import, so ``tc-circuits attribute --help`` is fast)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttributionConfig:
    """The engine's options (same names and defaults as :func:`attribute`; the CLI is built from it)."""

    max_n_logits: int = 10
    """At most this many default logit targets."""
    desired_logit_prob: float = 0.95
    """Default logit targets are taken until their cumulative probability reaches this."""
    batch_size: int = 64
    """Target rows per transposed pass."""
    max_feature_nodes: int | None = None
    """Expand at most this many features (by estimated influence); None expands all."""
    update_interval: int = 4
    """Batches between influence re-rankings (with max_feature_nodes)."""
    check_exactness: bool = True
    """Check that every expanded node's incoming edges sum to its value."""
    exactness_tol: float = 1e-3
    """Allowed |row sum - value| relative to 1 + sum |edges| + |value|."""
    progress: bool = True
    """Show a progress bar and log the phases."""

    def __post_init__(self) -> None:
        if self.max_n_logits < 1:
            raise ValueError(f"max_n_logits must be >= 1, got {self.max_n_logits}")
        if not 0 < self.desired_logit_prob <= 1:
            raise ValueError(f"desired_logit_prob must be in (0, 1], got {self.desired_logit_prob}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_feature_nodes is not None and self.max_feature_nodes < 0:
            raise ValueError(f"max_feature_nodes must be >= 0 or None, got {self.max_feature_nodes}")
        if self.update_interval < 1:
            raise ValueError(f"update_interval must be >= 1, got {self.update_interval}")
        if not self.exactness_tol > 0:
            raise ValueError(f"exactness_tol must be > 0, got {self.exactness_tol}")


__all__ = ["AttributionConfig"]
