"""Token sources for training.

A *token source* is any iterable of ``LongTensor[batch, seq]``. Training needs to replay the
stream deterministically (resume skips the batches already consumed), so the trainer takes a
*token factory*: a zero-argument callable that returns a fresh iterator over the same stream
every time. :func:`as_token_factory` turns a tensor of rows, a list of batches, or a callable
into one.

* :func:`rebatch` — regroup rows (tensors or lists) into fixed ``[batch, seq]`` tensors.
* :func:`pack_tokens` — pack variable-length token lists into rows of ``seq_len`` that each
  start with BOS (documents are joined with a separator token, then cut).
* :func:`tokens_from_texts` / :func:`tokens_from_hf_dataset` — tokenize and pack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

#: A zero-argument callable returning a fresh, deterministic iterator of ``[batch, seq]`` tokens.
TokenFactory = Callable[[], Iterable[Tensor]]


def _rows_of(item: Any) -> Tensor:
    t = item if isinstance(item, Tensor) else torch.as_tensor(item)
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2:
        raise ValueError(f"token batches must be [batch, seq] or [seq], got shape {tuple(t.shape)}")
    if t.is_floating_point():
        raise ValueError(f"tokens must be integers, got dtype {t.dtype}")
    return t.long()


def rebatch(
    source: Iterable[Any], batch_size: int, *, drop_last: bool = True
) -> Iterator[Int[Tensor, "batch seq"]]:
    """Regroup rows from ``source`` (tensors ``[b, seq]`` / ``[seq]`` or lists) into ``[batch_size, seq]``.

    All rows must have the same length. The last partial batch is dropped unless
    ``drop_last=False``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pending: list[Tensor] = []
    n_pending = 0
    seq_len: int | None = None
    for item in source:
        rows = _rows_of(item)
        if seq_len is None:
            seq_len = rows.shape[1]
        elif rows.shape[1] != seq_len:
            raise ValueError(f"all token rows must have length {seq_len}, got {rows.shape[1]}")
        pending.append(rows)
        n_pending += rows.shape[0]
        while n_pending >= batch_size:
            cat = torch.cat(pending)
            yield cat[:batch_size]
            rest = cat[batch_size:]
            pending, n_pending = ([rest], rest.shape[0]) if rest.shape[0] else ([], 0)
    if n_pending and not drop_last:
        yield torch.cat(pending)


def pack_tokens(
    docs: Iterable[Sequence[int]], seq_len: int, *, bos_token_id: int, sep_token_id: int | None = None
) -> Int[Tensor, "rows seq"]:
    """Pack token lists into rows ``[BOS, t_1, ..., t_{seq_len-1}]``.

    Documents are concatenated (each followed by ``sep_token_id`` when given) and the stream is
    cut into chunks of ``seq_len - 1`` tokens, each prefixed with BOS. The final partial chunk
    is dropped.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (BOS plus at least one token), got {seq_len}")
    body = seq_len - 1
    stream: list[int] = []
    for doc in docs:
        stream.extend(int(t) for t in doc)
        if sep_token_id is not None:
            stream.append(int(sep_token_id))
    n_rows = len(stream) // body
    if n_rows == 0:
        return torch.empty(0, seq_len, dtype=torch.long)
    chunks = torch.tensor(stream[: n_rows * body], dtype=torch.long).view(n_rows, body)
    bos = torch.full((n_rows, 1), int(bos_token_id), dtype=torch.long)
    return torch.cat([bos, chunks], dim=1)


def _tokenizer_of(tokenizer_or_model: Any) -> Any:
    tok = getattr(tokenizer_or_model, "tokenizer", None)
    if tok is not None and hasattr(tokenizer_or_model, "cfg"):
        return tok
    if hasattr(tokenizer_or_model, "encode"):
        return tokenizer_or_model
    raise ValueError("expected a tokenizer or a HookedTransformer with a tokenizer")


def _special_ids(tok: Any, bos_token_id: int | None, sep_token_id: int | None | str) -> tuple[int, int | None]:
    bos = bos_token_id if bos_token_id is not None else getattr(tok, "bos_token_id", None)
    if bos is None:
        bos = getattr(tok, "eos_token_id", None)
    if bos is None:
        raise ValueError("the tokenizer has no BOS (or EOS) token; pass bos_token_id")
    if sep_token_id == "eos":
        sep = getattr(tok, "eos_token_id", None)
        sep = bos if sep is None else sep
    else:
        sep = sep_token_id  # type: ignore[assignment]
    return int(bos), sep


def _encode(tok: Any, text: str) -> list[int]:
    try:
        return list(tok.encode(text, add_special_tokens=False))
    except TypeError:  # tokenizers.Tokenizer-like objects
        enc = tok.encode(text)
        return list(getattr(enc, "ids", enc))


def tokens_from_texts(
    texts: Iterable[str],
    tokenizer_or_model: Any,
    seq_len: int,
    *,
    bos_token_id: int | None = None,
    sep_token_id: int | None | str = "eos",
) -> Int[Tensor, "rows seq"]:
    """Tokenize ``texts`` (no special tokens) and pack them into BOS-prefixed rows.

    ``sep_token_id="eos"`` (default) separates documents with the tokenizer's EOS token;
    pass ``None`` for no separator or an int for another token.
    """
    tok = _tokenizer_of(tokenizer_or_model)
    bos, sep = _special_ids(tok, bos_token_id, sep_token_id)
    return pack_tokens((_encode(tok, t) for t in texts), seq_len, bos_token_id=bos, sep_token_id=sep)


def tokens_from_hf_dataset(
    dataset: Any,
    tokenizer_or_model: Any,
    seq_len: int,
    *,
    text_column: str = "text",
    tokens_column: str | None = None,
    bos_token_id: int | None = None,
    sep_token_id: int | None | str = "eos",
) -> Int[Tensor, "rows seq"]:
    """Pack a local Hugging Face ``datasets.Dataset`` into BOS-prefixed rows.

    Reads pre-tokenized ids from ``tokens_column`` when given (e.g. ``"input_ids"``), else
    tokenizes ``text_column``. Nothing is downloaded.
    """
    columns = list(getattr(dataset, "column_names", []) or [])
    column = tokens_column or text_column
    if column not in columns:
        raise ValueError(f"dataset has no column {column!r}; columns are {columns}")
    if tokens_column is not None:
        tok = _tokenizer_of(tokenizer_or_model) if tokenizer_or_model is not None else None
        if tok is None and bos_token_id is None:
            raise ValueError("pass a tokenizer or bos_token_id to pack a tokens column")
        if tok is not None:
            bos, sep = _special_ids(tok, bos_token_id, sep_token_id)
        else:
            bos, sep = int(bos_token_id), (None if sep_token_id == "eos" else sep_token_id)  # type: ignore[arg-type]
        docs = (row[tokens_column] for row in dataset)
        return pack_tokens(docs, seq_len, bos_token_id=bos, sep_token_id=sep)  # type: ignore[arg-type]
    texts = (row[text_column] for row in dataset)
    return tokens_from_texts(
        texts, tokenizer_or_model, seq_len, bos_token_id=bos_token_id, sep_token_id=sep_token_id
    )


def tensor_batches(
    tokens: Int[Tensor, "rows seq"], batch_size: int, *, shuffle_seed: int | None = None
) -> Iterator[Int[Tensor, "batch seq"]]:
    """Yield ``[batch_size, seq]`` slices of ``tokens`` (optionally in a seeded row order)."""
    order = (
        torch.randperm(tokens.shape[0], generator=torch.Generator().manual_seed(shuffle_seed))
        if shuffle_seed is not None
        else torch.arange(tokens.shape[0])
    )
    for start in range(0, tokens.shape[0] - batch_size + 1, batch_size):
        yield tokens[order[start : start + batch_size]]


def as_token_factory(
    source: Any, *, batch_size: int = 32, shuffle_seed: int | None = None
) -> TokenFactory:
    """A :data:`TokenFactory` for ``source``.

    * a callable is returned unchanged (it must return a fresh, identical stream per call);
    * a LongTensor ``[rows, seq]`` is served in batches of ``batch_size`` rows
      (row order shuffled with ``shuffle_seed`` when given);
    * a list/tuple of ``[batch, seq]`` tensors is replayed in order.

    One-shot iterators (generators) are rejected: they cannot be replayed for resume.
    """
    if callable(source) and not isinstance(source, Tensor):
        return source
    if isinstance(source, Tensor):
        rows = _rows_of(source)
        if rows.shape[0] < batch_size:
            raise ValueError(f"token tensor has {rows.shape[0]} rows, fewer than batch_size={batch_size}")
        return lambda: tensor_batches(rows, batch_size, shuffle_seed=shuffle_seed)
    if isinstance(source, (list, tuple)):
        batches = [_rows_of(b) for b in source]
        if not batches:
            raise ValueError("empty list of token batches")
        return lambda: iter(batches)
    raise ValueError(
        f"cannot replay a token source of type {type(source).__name__}; pass a tensor, a list of "
        "batches, or a zero-argument callable returning a fresh iterator"
    )
