"""tc_circuits: transcoders, skip transcoders and factorised feature attribution graphs.

The public surface is re-exported here, lazily (PEP 562): importing the package imports
nothing heavy and has no side effects, so ``tc-circuits --help`` answers without loading
torch; ``from tc_circuits import attribute`` imports what it needs on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> module it lives in.
_EXPORTS = {
    "attribute": "tc_circuits.attribution",
    "AttributionGraph": "tc_circuits.graph",
    "CrossLayerTranscoder": "tc_circuits.coders.clt",
    "load_organism": "tc_circuits.organism",
    "load_organism_transcoders": "tc_circuits.organism",
    "Site": "tc_circuits.models.sites",
    "splice": "tc_circuits.evaluation.splice",
    "TrainConfig": "tc_circuits.training.trainer",
    "train_clt": "tc_circuits.training.clt_trainer",
    "train_transcoders": "tc_circuits.training.trainer",
    "Transcoder": "tc_circuits.coders.transcoder",
    "TranscoderConfig": "tc_circuits.coders.transcoder",
    "TranscoderOutput": "tc_circuits.coders.transcoder",
    "TranscoderSet": "tc_circuits.coders.transcoder",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from tc_circuits.attribution import attribute
    from tc_circuits.coders.clt import CrossLayerTranscoder
    from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig, TranscoderOutput, TranscoderSet
    from tc_circuits.evaluation.splice import splice
    from tc_circuits.graph import AttributionGraph
    from tc_circuits.models.sites import Site
    from tc_circuits.organism import load_organism, load_organism_transcoders
    from tc_circuits.training.clt_trainer import train_clt
    from tc_circuits.training.trainer import TrainConfig, train_transcoders


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tc_circuits' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
