"""``tc-circuits intervene GRAPH --ablate L0:527@12 --steer L1:72@12=2.0``: what do features do?

Loads the graph (``AttributionGraph.load``) and its model and dictionaries (the recorded ones
by default; others are refused unless their content hashes match), applies the interventions
on the graph's prompt and prints each target's value clean, frozen (attention patterns and
LayerNorm scales fixed: the graph's linear model) and live (the real model), with the change
the graph's direct edges predict (:func:`tc_circuits.interventions.intervene_on_graph`).

``--ablate L<layer>:<latent>@<pos>`` sets a feature to 0; ``--steer L<layer>:<latent>@<pos>=<value>``
sets it to ``value``. Positions may be negative (from the end of the prompt).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

from tc_circuits.cli import HELP
from tc_circuits.cli.dataclass_args import add_dataclass_args, dataclass_from_args
from tc_circuits.cli.resolve import ModelOptions


@dataclass(frozen=True)
class InterveneOptions:
    """Options of ``tc-circuits intervene`` (the same as :func:`tc_circuits.interventions.intervene_on_graph`)."""

    ablate: tuple[str, ...] = ()
    """Features to ablate (set to 0), each L<layer>:<latent>@<pos>."""
    steer: tuple[str, ...] = ()
    """Features to set to a value, each L<layer>:<latent>@<pos>=<value>."""
    recompute_features: bool = True
    """Re-encode downstream features from their changed inputs (False: hold them at their clean values)."""
    json: bool = False
    """Print the result as JSON instead of a table."""
    progress: bool = True
    """Unused (interventions are single forward passes); accepted so every command takes --no-progress."""

    def interventions(self) -> list:
        from tc_circuits.interventions import parse_feature_spec

        ivs = [parse_feature_spec(s) for s in self.ablate] + [parse_feature_spec(s, steer=True) for s in self.steer]
        if not ivs:
            raise ValueError("nothing to do: give --ablate and/or --steer features")
        return ivs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("intervene", help=HELP["intervene"],
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("graph_dir", help="folder written by AttributionGraph.save (e.g. by tc-circuits attribute)")
    add_dataclass_args(p, InterveneOptions)
    add_dataclass_args(p, ModelOptions)
    p.set_defaults(func=run)


def intervene_graph(graph_dir: str, opts: InterveneOptions, model_opts: ModelOptions = ModelOptions(),
                    *, loaded: Any = None) -> list:
    """Load graph, model and dictionaries and intervene as the command does; returns the ``TargetChange`` list."""
    from tc_circuits.cli.resolve import resolve_for_graph
    from tc_circuits.graph import AttributionGraph
    from tc_circuits.interventions import intervene_on_graph

    ivs = opts.interventions()
    graph = AttributionGraph.load(graph_dir)
    model, tcs, _ = loaded or resolve_for_graph(graph, model_opts)
    return intervene_on_graph(graph, model, tcs, ivs, recompute_features=opts.recompute_features)


def format_changes(changes: list) -> str:
    """An aligned text table of target changes."""
    head = ("target", "clean", "frozen", "Δ frozen", "live", "Δ live", "Δ direct edges")
    rows = [(c.label, f"{c.clean:.4f}", f"{c.frozen:.4f}", f"{c.frozen_change:+.4f}", f"{c.live:.4f}",
             f"{c.live_change:+.4f}", f"{c.direct:+.4f}") for c in changes]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [head, *rows])


def run(args: argparse.Namespace) -> int:
    opts = dataclass_from_args(InterveneOptions, args)
    changes = intervene_graph(args.graph_dir, opts, dataclass_from_args(ModelOptions, args))
    if opts.json:
        print(json.dumps([{**c._asdict(), "frozen_change": c.frozen_change, "live_change": c.live_change}
                          for c in changes], indent=2))
    else:
        print(format_changes(changes))
    return 0
