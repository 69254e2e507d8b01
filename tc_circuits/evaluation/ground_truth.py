"""Ground-truth evaluation of dictionaries on the organism: interpretability, probing, absorption.

Phases of :func:`ground_truth_rows`:

1. **labelled tokens** -- ``n_batches`` held-out batches of the organism corpus with per-token
   labels (:func:`tc_circuits.organism.labels.labelled_token_batches`), turned into binary
   variables (:func:`~tc_circuits.organism.labels.binary_variables`);
2. **activations** -- each dictionary's input and latents on those tokens;
3. **scores** per dictionary and layer -- the interpretability score against every variable
   except current-token identity (:func:`~tc_circuits.evaluation.interpretability.score_latents`
   with ``exclude_families=("token",)``) and with it; k-sparse probe accuracy averaged over
   :data:`PROBE_VARIABLES` next to the raw-activation probe; absorption averaged over
   :data:`ABSORPTION_VARIABLES` (:mod:`tc_circuits.evaluation.probing`).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

import torch

from tc_circuits.evaluation.interpretability import dictionary_activations, score_latents
from tc_circuits.evaluation.probing import absorption, sparse_probe

#: Contextual variables probed (the token alone does not decide them).
PROBE_VARIABLES = (
    "role:start_yy", "role:end_yy", "role:subject", "role:indirect_object", "role:list_repeat",
    "century:year_in_1700s", "kind:greater_than",
)
#: General variables tested for absorption into more specific latents.
ABSORPTION_VARIABLES = ("century:year_in_1700s", "role:start_yy", "role:list_repeat", "role:subject")
PROBE_KS = (1, 2, 5, 10)


@dataclass(frozen=True)
class GroundTruthRow:
    """Ground-truth scores of one dictionary at one layer."""

    kind: str
    layer: int
    interp_f1: float
    """Mean best F1 over alive latents, variables without current-token identity."""
    interp_auroc: float
    matched_share: float
    """Share of alive latents with best F1 >= 0.5 (without token identity)."""
    interp_f1_with_tokens: float
    """The same mean best F1 when current-token identity counts as a variable."""
    probe: dict[int, float]
    """k -> mean k-sparse probe test accuracy over PROBE_VARIABLES."""
    probe_raw: float
    """Mean test accuracy of the probe on the raw input activation."""
    absorption: float
    """Mean absorption rate over ABSORPTION_VARIABLES."""
    main_recall: float
    """Mean recall of the main latent over ABSORPTION_VARIABLES."""
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["probe"] = {str(k): v for k, v in self.probe.items()}
        return d


def organism_labelled(n_batches: int = 8, rows: int = 32, seq_len: int = 64, seed: int = 20_000):
    """Held-out labelled organism batches and their binary variables."""
    from tc_circuits.organism import organism_tokenizer
    from tc_circuits.organism.labels import binary_variables, labelled_token_batches

    tok = organism_tokenizer()
    batches = list(itertools.islice(labelled_token_batches(seed, rows, seq_len, tokenizer=tok), n_batches))
    strings = [tok.decode([i]) for i in range(len(tok))]
    return batches, binary_variables(batches, token_strings=strings)


@torch.no_grad()
def ground_truth_rows(
    model, transcoders: dict, kind: str, batches, variables, *, ks: tuple[int, ...] = PROBE_KS
) -> list[GroundTruthRow]:
    """Scores of ``transcoders`` (one kind, ``{layer: Transcoder}``) on labelled batches."""
    acts = dictionary_activations(model, transcoders, [b.tokens for b in batches])
    rows = []
    for layer, (x, z) in sorted(acts.items()):
        gt = score_latents(z, variables.matrix, variables.names, families=variables.family,
                           exclude_families=("token",))
        gt_tok = score_latents(z, variables.matrix, variables.names, families=variables.family)
        probes = [sparse_probe(z, variables.column(v), ks=ks, raw=x, name=v)
                  for v in PROBE_VARIABLES if v in variables.names]
        absorbed = [absorption(z, variables.column(v), name=v)
                    for v in ABSORPTION_VARIABLES if v in variables.names]
        rows.append(GroundTruthRow(
            kind=kind,
            layer=int(layer),
            interp_f1=gt.score,
            interp_auroc=gt.mean_auroc,
            matched_share=gt.matched_share,
            interp_f1_with_tokens=gt_tok.score,
            probe={k: sum(p.sparse[k] for p in probes) / len(probes) for k in ks},
            probe_raw=sum(p.raw for p in probes) / len(probes),
            absorption=sum(a.absorption_rate for a in absorbed) / len(absorbed),
            main_recall=sum(a.main_recall for a in absorbed) / len(absorbed),
            details={
                "family_share": gt.family_share,
                "top_latents": gt.top_latents(8),
                "probes": {p.variable: {"sparse": {str(k): v for k, v in p.sparse.items()}, "raw": p.raw} for p in probes},
                "absorption": {a.variable: asdict(a) | {"specific_latents": a.specific_latents[:20]} for a in absorbed},
            },
        ))
    return rows


__all__ = ["ABSORPTION_VARIABLES", "GroundTruthRow", "PROBE_KS", "PROBE_VARIABLES", "ground_truth_rows", "organism_labelled"]
