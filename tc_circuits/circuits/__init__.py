"""Task-level circuits: faithfulness of attribution graphs and prompt-set (whole-task) graphs.

Downstream of :mod:`tc_circuits.interventions` on the data path: it attributes, ablates and
aggregates, and never imports views or the CLI.
"""
