"""The organism's architecture, token source and offline loaders.

A small GPT-2-style ``HookedTransformer``: LayerNorm, learned positional embeddings, GELU
MLPs, 3 layers, d_model 128. Raw (unprocessed) weights ship in the package as safetensors;
:func:`load_organism` applies TransformerLens weight processing at load time exactly as
``HookedTransformer.from_pretrained`` does for GPT-2 (fold_ln, center_writing_weights,
center_unembed by default).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

from tc_circuits.models.backend import hooked_transformer_class
from tc_circuits.models.fast_kernels import use_fast_kernels
from tc_circuits.organism.corpus import documents
from tc_circuits.organism.tokenizer import ORGANISM_NAME, load_tokenizer

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer, HookedTransformerConfig

#: Folder of the shipped weights (model, tokenizer, transcoders).
WEIGHTS_DIR = Path(__file__).parent / "weights"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
TRANSCODER_KINDS = ("skip_transcoder", "transcoder", "sae")

#: Architecture of the organism (d_vocab is filled in from the tokenizer).
ARCHITECTURE = dict(
    n_layers=3,
    d_model=128,
    n_heads=4,
    d_head=32,
    d_mlp=512,
    n_ctx=1024,
    act_fn="gelu_new",
    normalization_type="LN",
    positional_embedding_type="standard",
)


def organism_config(d_vocab: int, seed: int = 0) -> HookedTransformerConfig:
    """The organism's ``HookedTransformerConfig`` for a vocabulary of ``d_vocab`` tokens."""
    hooked_transformer_class()  # a clear error on TransformerLens 4 (no HookedTransformer)
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        **ARCHITECTURE,
        d_vocab=d_vocab,
        model_name=ORGANISM_NAME,
        tokenizer_prepends_bos=False,
        default_prepend_bos=True,
        seed=seed,
    )


@lru_cache(maxsize=4)
def _cached_tokenizer(path: str) -> PreTrainedTokenizerFast:
    return load_tokenizer(path)


def organism_tokenizer(weights_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """The organism's tokenizer (shipped ``tokenizer.json``)."""
    return _cached_tokenizer(str(Path(weights_dir or WEIGHTS_DIR)))


def organism_token_source(
    seed: int, batch_size: int, seq_len: int, *, tokenizer: PreTrainedTokenizerFast | None = None
) -> Iterator[torch.Tensor]:
    """Endless deterministic batches ``[batch_size, seq_len]`` of corpus tokens.

    Each row is BOS followed by the tokens of one generated document, truncated to
    ``seq_len``. The same ``seed`` always gives the same stream.
    """
    if batch_size < 1 or seq_len < 2:
        raise ValueError(f"need batch_size >= 1 and seq_len >= 2, got {batch_size}, {seq_len}")
    tok = tokenizer or organism_tokenizer()
    bos = tok.bos_token_id
    n_sentences = max(2, seq_len // 8)
    docs = documents(seed, n_sentences=n_sentences)
    while True:
        rows = []
        while len(rows) < batch_size:
            ids = tok(next(docs))["input_ids"]
            if len(ids) >= seq_len - 1:
                rows.append([bos] + ids[: seq_len - 1])
        yield torch.tensor(rows, dtype=torch.long)


def load_organism(
    *,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    weights_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> HookedTransformer:
    """The bundled organism as a ready ``HookedTransformer`` with its tokenizer, fully offline.

    The processing flags mean what they mean for ``HookedTransformer.from_pretrained``.
    The shipped transcoders were trained on the default (fully processed) model.
    """
    weights_dir = Path(weights_dir or WEIGHTS_DIR)
    model_path = weights_dir / MODEL_FILE
    if not model_path.is_file():
        raise FileNotFoundError(
            f"organism weights not found at {model_path}; run `tc-circuits organism train`"
        )
    tokenizer = organism_tokenizer(weights_dir)
    meta = json.loads((weights_dir / CONFIG_FILE).read_text())
    cfg = organism_config(d_vocab=meta["d_vocab"])
    model = hooked_transformer_class()(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_state_dict(load_file(str(model_path)), strict=True)
    if fold_ln or center_writing_weights or center_unembed:
        model.process_weights_(
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
        )
    model.to(device)
    use_fast_kernels(model)
    model.eval()
    return model


def load_organism_transcoders(
    kind: str = "skip_transcoder",
    *,
    model: HookedTransformer | None = None,
    weights_dir: str | Path | None = None,
):
    """The shipped transcoders of one ``kind`` for every organism layer, as a ``TranscoderSet``.

    ``kind`` is ``"skip_transcoder"`` (default), ``"transcoder"`` or ``"sae"``. With ``model``,
    each transcoder is checked to fit it (weight processing included).
    """
    from tc_circuits.coders.transcoder import TranscoderSet

    if kind not in TRANSCODER_KINDS:
        raise ValueError(f"unknown transcoder kind {kind!r}; expected one of {TRANSCODER_KINDS}")
    path = Path(weights_dir or WEIGHTS_DIR) / "transcoders" / kind
    if not path.is_dir():
        raise FileNotFoundError(
            f"no shipped {kind} transcoders at {path}; run `tc-circuits organism train`"
        )
    return TranscoderSet.load(path, model=model)
