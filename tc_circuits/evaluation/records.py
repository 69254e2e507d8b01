"""Result records of reconstruction evaluation and their markdown rows.

Its own module so that both :mod:`tc_circuits.evaluation.evaluate` (per-layer transcoders) and
:mod:`tc_circuits.evaluation.splice_clt` (cross-layer transcoders) build the same record without
importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tc_circuits.evaluation.metrics import DensityHistogram


def _md_row(values: list[Any]) -> str:
    cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in values]
    return "| " + " | ".join(cells) + " |"


def _md_header(names: list[str]) -> str:
    return "| " + " | ".join(names) + " |\n|" + "---|" * len(names)


@dataclass(frozen=True)
class ReconstructionMetrics:
    """How well one transcoder reconstructs its output site on the original model."""

    layer: int
    kind: str
    fvu: float
    explained_variance: float
    mse: float
    l0: float
    dead_fraction: float
    n_tokens: int
    n_latents: int
    density: DensityHistogram

    COLUMNS = ("layer", "kind", "fvu", "explained_variance", "mse", "l0", "dead_fraction", "n_tokens")

    def to_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in self.COLUMNS}
        d["n_latents"] = self.n_latents
        d["density"] = self.density.to_dict()
        return d

    @classmethod
    def markdown_header(cls) -> str:
        return _md_header(list(cls.COLUMNS))

    def markdown_row(self) -> str:
        return _md_row([getattr(self, n) for n in self.COLUMNS])
