"""The indirect-object task (Wang et al. 2022) as a :class:`~tc_circuits.tasks.Task`.

Prompts ``"When Mary and John went to the store, John gave a book to"``: the subject (John) is
repeated, the correct next token is the indirect object ``" Mary"``. Names, places and objects
come from the organism corpus's lists (every name is one token there and in GPT-2). The metric
is the logit difference ``logit(IO) - logit(S)`` at the last position, and
:meth:`IOITask.direction` is that readout (+1 on the IO token, -1 on the subject token), so
``per_prompt_metric`` equals the linear attribution target.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

TEMPLATE = "When {a} and {b} went to the {place}, {b} gave a {obj} to"
#: Role of every word of the template (after BOS), for prompt-set graphs.
ROLE_LABELS = ("When", "IO", "and", "S1", "went", "to", "the", "{place}", ",", "S2", "gave", "a", "{obj}", "to")


class IOITask:
    """IOI prompts of one token length with the IO-minus-subject logit difference."""

    def __init__(self, tokens: Tensor, io_ids: Sequence[int], s_ids: Sequence[int], *, d_vocab: int,
                 texts: Sequence[str] = (), name: str = "ioi"):
        if tokens.ndim != 2 or tokens.shape[0] != len(io_ids) or len(io_ids) != len(s_ids):
            raise ValueError(f"tokens {tuple(tokens.shape)} do not match {len(io_ids)} IO / {len(s_ids)} S ids")
        self.name = name
        self._tokens = tokens.long()
        self.io_ids = torch.tensor(list(io_ids), dtype=torch.long)
        self.s_ids = torch.tensor(list(s_ids), dtype=torch.long)
        self.d_vocab = int(d_vocab)
        self.texts = list(texts)

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: Any,
        names: Sequence[str] | None = None,
        *,
        place: str = "store",
        obj: str = "book",
        prepend_bos: bool = True,
        max_prompts: int | None = None,
    ) -> IOITask:
        """Every ordered pair of distinct ``names`` (the organism's names by default)."""
        from tc_circuits.organism.corpus import NAMES

        names = list(names or NAMES)
        rows, io, s, texts = [], [], [], []
        for a, b in itertools.permutations(names, 2):
            text = TEMPLATE.format(a=a, b=b, place=place, obj=obj)
            ids = tokenizer(text)["input_ids"]
            if prepend_bos and (not ids or ids[0] != tokenizer.bos_token_id):
                ids = [tokenizer.bos_token_id] + ids
            a_ids, b_ids = tokenizer(" " + a)["input_ids"], tokenizer(" " + b)["input_ids"]
            a_ids = [t for t in a_ids if t != tokenizer.bos_token_id]
            b_ids = [t for t in b_ids if t != tokenizer.bos_token_id]
            if len(a_ids) != 1 or len(b_ids) != 1:
                raise ValueError(f"IOI names must be single tokens with a leading space: {a!r} -> {a_ids}, {b!r} -> {b_ids}")
            rows.append(ids)
            io.append(a_ids[0])
            s.append(b_ids[0])
            texts.append(text)
            if max_prompts is not None and len(rows) >= max_prompts:
                break
        if len({len(r) for r in rows}) != 1:
            raise ValueError("IOI prompts tokenize to different lengths; pick single-token names/places/objects")
        return cls(torch.tensor(rows), io, s, d_vocab=len(tokenizer), texts=texts)

    @property
    def tokens(self) -> Int[Tensor, "n_prompts seq"]:
        return self._tokens

    def __len__(self) -> int:
        return int(self._tokens.shape[0])

    def direction(self, d_vocab: int | None = None) -> Float[Tensor, "n_prompts d_vocab"]:
        out = torch.zeros(len(self), self.d_vocab if d_vocab is None else int(d_vocab))
        rows = torch.arange(len(self))
        out[rows, self.io_ids] = 1.0
        out[rows, self.s_ids] = -1.0
        return out

    def per_prompt_metric(self, logits: Float[Tensor, "n_prompts seq d_vocab"]) -> Float[Tensor, " n_prompts"]:
        if logits.ndim != 3 or logits.shape[0] != len(self):
            raise ValueError(f"expected logits [{len(self)}, seq, d_vocab], got {tuple(logits.shape)}")
        last = logits[:, -1]
        rows = torch.arange(len(self))
        return last[rows, self.io_ids] - last[rows, self.s_ids]

    def metric(self, logits: Float[Tensor, "n_prompts seq d_vocab"]) -> float:
        return float(self.per_prompt_metric(logits).mean())

    def __repr__(self) -> str:
        return f"IOITask({len(self)} prompts, seq={self._tokens.shape[1]})"


__all__ = ["IOITask", "ROLE_LABELS", "TEMPLATE"]
