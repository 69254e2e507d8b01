"""Per-token latent-variable labels of the organism's corpus (the ground truth it was built from).

The corpus is generated in code (:mod:`tc_circuits.organism.corpus`) as labelled segments, so
every token's variables are known: the sentence **kind** (greater_than, induction, ioi,
counting, filler), the token's **role** (start_century, start_yy, end_century, end_yy,
event_noun; list_first / list_repeat of an induction pair; io_first, s_first, subject,
indirect_object, place, object of an IOI sentence; count_number; adjective, agent, verb,
patient of a filler sentence; ``template`` for fixed template text; ``bos``) and its **value**
(the year, century, name, word).

:func:`labelled_token_batches` yields exactly the batches of
:func:`~tc_circuits.organism.model.organism_token_source` (same seed, same rows, same tokens;
checked token by token) with those labels. :func:`binary_variables` turns labels into the
binary variables the interpretability scores test latents against
(:mod:`tc_circuits.evaluation.interpretability`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from transformers import PreTrainedTokenizerFast

from tc_circuits.organism.corpus import MIX, labelled_documents

KINDS = ("bos",) + tuple(MIX)
#: Every role a token can have, in code order (``template``: fixed template text).
ROLES = (
    "bos", "template",
    "event_noun", "start_century", "start_yy", "end_century", "end_yy",
    "list_first", "list_repeat",
    "io_first", "s_first", "place", "subject", "object", "indirect_object",
    "count_number",
    "adjective", "agent", "verb", "patient",
)
#: Roles whose value is a name / word (one binary variable per value).
CATEGORICAL_ROLES = ("event_noun", "io_first", "s_first", "subject", "indirect_object", "list_repeat")
#: Roles whose value is a number (variables per decade, and the centuries).
NUMERIC_ROLES = ("start_century", "start_yy", "end_century", "end_yy", "count_number")


@dataclass(frozen=True)
class LabelledTokens:
    """Token batches of the organism corpus with per-token labels (all ``[rows, seq]``)."""

    tokens: Int[Tensor, "rows seq"]
    kind: Int[Tensor, "rows seq"]
    """Index into :data:`KINDS` of the sentence the token belongs to."""
    role: Int[Tensor, "rows seq"]
    """Index into :data:`ROLES`."""
    value: list[list[str | int | None]]
    """The role's value (a year as int, a name as str) or None."""
    century: Int[Tensor, "rows seq"]
    """For year tokens (start/end century and yy): the sentence's century (11..19); else -1."""


def _token_labels(
    tok: PreTrainedTokenizerFast, doc: list[tuple[str, list]]
) -> tuple[list[int], list[tuple[int, int, str | int | None, int]]]:
    """Token ids of one document and (kind, role, value, century) per token."""
    text_parts, spans = [], []  # spans: (start, end, kind, role, value, century)
    pos = 0
    for i, (kind, segs) in enumerate(doc):
        if i:
            text_parts.append(" ")
            pos += 1
        century = next((v for _, r, v in segs if r == "start_century"), -1)
        for text, role, value in segs:
            spans.append((pos, pos + len(text), kind, role or "template", value, century))
            text_parts.append(text)
            pos += len(text)
    text = "".join(text_parts)
    enc = tok(text, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = []
    j = 0
    for start, end in offsets:
        last = end - 1  # the token's last character decides its segment (a leading space
        while spans[j][1] <= last:  # between sentences belongs to no segment)
            j += 1
        if not spans[j][0] <= last < spans[j][1] or start < 0:
            raise RuntimeError(f"token span {(start, end)} of {text!r} falls outside the segments")
        _, _, kind, role, value, century = spans[j]
        is_year = role in ("start_century", "start_yy", "end_century", "end_yy")
        labels.append((KINDS.index(kind), ROLES.index(role), value, century if is_year else -1))
    return ids, labels


def labelled_token_batches(
    seed: int, batch_size: int, seq_len: int, *, tokenizer: PreTrainedTokenizerFast | None = None
) -> Iterator[LabelledTokens]:
    """The batches of ``organism_token_source(seed, batch_size, seq_len)``, labelled.

    Raises ``RuntimeError`` if a labelled document tokenizes differently from the plain one
    (the labels never change the text the shipped model was trained on).
    """
    from tc_circuits.organism.model import organism_tokenizer

    if batch_size < 1 or seq_len < 2:
        raise ValueError(f"need batch_size >= 1 and seq_len >= 2, got {batch_size}, {seq_len}")
    tok = tokenizer or organism_tokenizer()
    bos = tok.bos_token_id
    docs = labelled_documents(seed, n_sentences=max(2, seq_len // 8))
    while True:
        rows, kinds, roles, values, cents = [], [], [], [], []
        while len(rows) < batch_size:
            doc = next(docs)
            ids, labels = _token_labels(tok, doc)
            if len(ids) < seq_len - 1:
                continue
            plain = tok(" ".join("".join(t for t, _, _ in segs) for _, segs in doc))["input_ids"]
            if plain != ids:
                raise RuntimeError("labelled document tokenizes differently from the plain corpus")
            labels = labels[: seq_len - 1]
            rows.append([bos] + ids[: seq_len - 1])
            kinds.append([0] + [k for k, _, _, _ in labels])
            roles.append([0] + [r for _, r, _, _ in labels])
            values.append([None] + [v for _, _, v, _ in labels])
            cents.append([-1] + [c for _, _, _, c in labels])
        yield LabelledTokens(
            tokens=torch.tensor(rows, dtype=torch.long),
            kind=torch.tensor(kinds, dtype=torch.long),
            role=torch.tensor(roles, dtype=torch.long),
            value=values,
            century=torch.tensor(cents, dtype=torch.long),
        )


@dataclass(frozen=True)
class Variables:
    """Binary variables over ``n`` tokens: ``matrix[i, v]`` is True when variable ``v`` holds."""

    names: list[str]
    family: list[str]
    """Family of each variable: ``kind``, ``role``, ``value``, ``decade``, ``century``, ``token``."""
    matrix: Bool[Tensor, "n n_vars"]

    def __post_init__(self) -> None:
        if len(self.names) != self.matrix.shape[1] or len(self.family) != len(self.names):
            raise ValueError(f"{len(self.names)} names, {len(self.family)} families, {self.matrix.shape[1]} columns")

    def column(self, name: str) -> Bool[Tensor, " n"]:
        if name not in self.names:
            raise KeyError(f"no variable {name!r}; have e.g. {self.names[:8]}")
        return self.matrix[:, self.names.index(name)]


def binary_variables(
    batches: list[LabelledTokens],
    *,
    start_pos: int = 1,
    min_count: int = 20,
    token_strings: list[str] | None = None,
) -> Variables:
    """Binary variables of every token at positions ``>= start_pos``, flattened in row order
    (the order of ``activations[:, start_pos:].reshape(-1, d)``).

    Families: ``kind:K``; ``role:R``; ``value:R=v`` for names / words of
    :data:`CATEGORICAL_ROLES`; ``decade:R=d0s`` (start/end yy and counts by decade);
    ``century:R=c`` (start/end century token, and ``century:year_in_c`` for both two-digit
    year tokens of century ``c``, e.g. a year in the 1700s); ``token:t`` (current-token
    identity, a baseline family, only with ``token_strings``). Variables with fewer than
    ``min_count`` positives are dropped.
    """
    if not batches:
        raise ValueError("no labelled batches")
    kind = torch.cat([b.kind[:, start_pos:].reshape(-1) for b in batches])
    role = torch.cat([b.role[:, start_pos:].reshape(-1) for b in batches])
    cent = torch.cat([b.century[:, start_pos:].reshape(-1) for b in batches])
    toks = torch.cat([b.tokens[:, start_pos:].reshape(-1) for b in batches])
    values = [v for b in batches for row in b.value for v in row[start_pos:]]
    cols: dict[str, tuple[str, Tensor]] = {}
    for i, k in enumerate(KINDS[1:], start=1):
        cols[f"kind:{k}"] = ("kind", kind == i)
    for i, r in enumerate(ROLES[1:], start=1):
        cols[f"role:{r}"] = ("role", role == i)
    val_str = [None if v is None else str(v) for v in values]
    for r in CATEGORICAL_ROLES:
        is_r = role == ROLES.index(r)
        for v in sorted({val_str[j] for j in torch.nonzero(is_r).flatten().tolist()}):
            cols[f"value:{r}={v}"] = ("value", is_r & torch.tensor([s == v for s in val_str]))
    ival = torch.tensor([v if isinstance(v, int) else -1 for v in values])
    for r in ("start_yy", "end_yy", "count_number"):
        is_r = role == ROLES.index(r)
        for d in range(10):
            cols[f"decade:{r}={d}0s"] = ("decade", is_r & (ival // 10 == d))
    years = (role == ROLES.index("start_yy")) | (role == ROLES.index("end_yy"))
    for c in range(11, 20):
        for r in ("start_century", "end_century"):
            cols[f"century:{r}={c}"] = ("century", (role == ROLES.index(r)) & (ival == c))
        cols[f"century:year_in_{c}00s"] = ("century", years & (cent == c))
    if token_strings is not None:
        for t in torch.unique(toks).tolist():
            cols[f"token:{token_strings[t]!r}"] = ("token", toks == t)
    kept = {n: fv for n, fv in cols.items() if int(fv[1].sum()) >= min_count}
    if not kept:
        raise ValueError(f"no variable has {min_count} positives; label more tokens")
    names = list(kept)
    return Variables(names, [kept[n][0] for n in names], torch.stack([kept[n][1] for n in names], 1))


__all__ = ["CATEGORICAL_ROLES", "KINDS", "LabelledTokens", "ROLES", "Variables", "binary_variables", "labelled_token_batches"]
