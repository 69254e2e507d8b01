"""tc_circuits: transcoders, skip transcoders and factorised feature attribution graphs.

The public surface is re-exported here; importing the package has no side effects.
"""

from tc_circuits.attribution import attribute
from tc_circuits.graph import AttributionGraph
from tc_circuits.organism import load_organism, load_organism_transcoders
from tc_circuits.models.sites import Site
from tc_circuits.evaluation.splice import splice
from tc_circuits.training.trainer import TrainConfig, train_transcoders
from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig, TranscoderOutput, TranscoderSet

__all__ = [
    "AttributionGraph",
    "Site",
    "TrainConfig",
    "Transcoder",
    "TranscoderConfig",
    "TranscoderOutput",
    "TranscoderSet",
    "attribute",
    "load_organism",
    "load_organism_transcoders",
    "splice",
    "train_transcoders",
]
__version__ = "0.1.0"
