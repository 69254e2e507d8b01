"""Evaluation: splicing, metrics, spliced evaluation and the SAE / transcoder / skip-transcoder comparison.

``from tc_circuits.evaluation import evaluate_reconstruction, evaluate_splice`` keeps working.
"""

from tc_circuits.evaluation.evaluate import evaluate_reconstruction, evaluate_splice, token_batches

__all__ = ["evaluate_reconstruction", "evaluate_splice", "token_batches"]
