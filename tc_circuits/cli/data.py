"""Token sources of the command line: the organism corpus, or a local Hugging Face dataset.

``DataOptions`` (``--dataset --text-column --seq-len --source-batch-rows``) is shared by
``train`` and ``evaluate``. The organism streams its generated corpus (any seed is a fresh,
deterministic stream); a dataset folder (``datasets.load_from_disk``) is packed into
BOS-prefixed rows by :func:`tc_circuits.training.data.tokens_from_hf_dataset`. Held-out
evaluation uses another seed of the organism corpus, or the last ``eval_rows`` rows of a
dataset, which :func:`split_dataset_tokens` keeps out of training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DataOptions:
    """Where the tokens come from (``--dataset --text-column --seq-len --source-batch-rows``)."""

    dataset: str | None = None
    """Local Hugging Face dataset folder (datasets.load_from_disk); None = the organism corpus (organism only)."""
    text_column: str = "text"
    """Text column of --dataset."""
    seq_len: int | None = None
    """Tokens per row (None = 64 for the organism, as in the demo and compare: it was trained on 96-token rows; else min(n_ctx, 128))."""
    source_batch_rows: int = 32
    """Rows per token batch fed to the model."""

    def __post_init__(self) -> None:
        if self.seq_len is not None and self.seq_len < 2:
            raise ValueError(f"--seq-len must be >= 2, got {self.seq_len}")
        if self.source_batch_rows < 1:
            raise ValueError(f"--source-batch-rows must be >= 1, got {self.source_batch_rows}")


#: Default row length on the organism (within the 96 tokens per row it was trained on).
ORGANISM_SEQ_LEN = 64


def seq_len_for(model: Any, data: DataOptions) -> int:
    """Tokens per row: ``data.seq_len``, else 64 on the organism, else ``min(n_ctx, 128)``."""
    if data.seq_len:
        return data.seq_len
    from tc_circuits.organism.tokenizer import ORGANISM_NAME

    if model.cfg.model_name == ORGANISM_NAME:
        return ORGANISM_SEQ_LEN
    return min(int(model.cfg.n_ctx), 128)


def dataset_tokens(model: Any, data: DataOptions) -> Any:
    """All rows of ``data.dataset`` packed for ``model`` (``LongTensor [rows, seq]``)."""
    if data.dataset is None:
        raise ValueError("--dataset (a local datasets folder) is required for models other than the organism")
    if model.tokenizer is None:
        raise ValueError(f"--dataset needs a model with a tokenizer; {model.cfg.model_name!r} has none")
    import datasets

    from tc_circuits.training.data import tokens_from_hf_dataset

    return tokens_from_hf_dataset(datasets.load_from_disk(data.dataset), model, seq_len_for(model, data),
                                  text_column=data.text_column)


def split_dataset_tokens(tokens: Any, eval_rows: int) -> tuple[Any, Any]:
    """``(train rows, held-out rows)``: the last ``eval_rows`` rows are held out."""
    n = int(tokens.shape[0])
    if n < 2:
        raise ValueError(f"the dataset packs into {n} row(s); need at least 2 to hold some out")
    k = max(1, min(eval_rows, n // 4))
    return tokens[: n - k], tokens[n - k :]


def eval_batches(model: Any, data: DataOptions, *, is_organism: bool, seed: int, sequences: int) -> list:
    """``sequences`` held-out rows as a list of batches (organism: corpus stream ``seed``)."""
    if sequences < 1:
        raise ValueError(f"need at least 1 evaluation sequence, got {sequences}")
    rows = data.source_batch_rows
    if is_organism and data.dataset is None:
        from tc_circuits.organism import organism_token_source

        stream = organism_token_source(seed, min(rows, sequences), seq_len_for(model, data), tokenizer=model.tokenizer)
        out, n = [], 0
        while n < sequences:
            b = next(stream)[: sequences - n]
            out.append(b)
            n += b.shape[0]
        return out
    _, held = split_dataset_tokens(dataset_tokens(model, data), sequences)
    return [held[i : i + rows] for i in range(0, held.shape[0], rows)]


__all__ = ["DataOptions", "dataset_tokens", "eval_batches", "seq_len_for", "split_dataset_tokens"]
