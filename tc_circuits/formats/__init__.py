"""Importers and exporters for other projects' transcoder / SAE checkpoints.

| format | import | export |
|---|---|---|
| circuit-tracer (``config.yaml`` + ``layer_{i}.safetensors``) | :func:`load_circuit_tracer` | :func:`save_circuit_tracer` |
| EleutherAI sparsify (``cfg.json`` + ``sae.safetensors``) | :func:`load_sparsify` | :func:`save_sparsify` |
| SAELens (``cfg.json`` + ``sae_weights.safetensors``) | :func:`load_saelens` | :func:`save_saelens` |
| Dunefsky et al. ``.pt`` (restricted unpickler) | :func:`load_dunefsky` | — |
| GemmaScope ``params.npz`` / GemmaScope 2 ``params.safetensors`` | :func:`load_gemmascope` | — |

Foreign hook points are mapped per model family (:mod:`tc_circuits.formats.family_sites`):
pass ``model=`` (the processed target model) to check the family, widths and processing, and
``hf_model=`` (its unprocessed weights: a Hugging Face folder, model or state dict) where a
file reads the MLP input after the norm's gain, which is then folded into the encoder exactly.

:func:`load_any` detects the format; :func:`load_from_hub` downloads through the HF cache first;
:func:`load_saelens_release` resolves a SAELens pretrained ``(release, sae_id)`` reference.
"""

from tc_circuits.formats.circuit_tracer import load_circuit_tracer, save_circuit_tracer
from tc_circuits.formats.detect import FORMATS, detect_format, load_any
from tc_circuits.formats.dunefsky import load_dunefsky
from tc_circuits.formats.gemmascope import load_gemmascope, load_gemmascope_set
from tc_circuits.formats.hub import load_from_hub, load_saelens_release
from tc_circuits.formats.saelens import load_saelens, save_saelens
from tc_circuits.formats.safe_pickle import safe_torch_load
from tc_circuits.formats.sparsify import load_sparsify, load_sparsify_many, save_sparsify

__all__ = [
    "FORMATS",
    "detect_format",
    "load_any",
    "load_circuit_tracer",
    "load_dunefsky",
    "load_gemmascope",
    "load_gemmascope_set",
    "load_from_hub",
    "load_saelens_release",
    "load_saelens",
    "load_sparsify",
    "load_sparsify_many",
    "safe_torch_load",
    "save_circuit_tracer",
    "save_saelens",
    "save_sparsify",
]
