"""Attribution targets: any direction over the vocabulary, read at any position.

A target's value is ``d . logits[pos]`` for a vector ``d`` over the vocabulary. Special cases:

* a single logit (``d = one_hot(tok)``), by default *demeaned* like circuit-tracer:
  ``d = one_hot(tok) - 1/d_vocab``, i.e. the logit minus the mean logit. The mean logit
  shifts every logit alike and does not change probabilities, so demeaning removes a
  component that carries no information about the next token;
* a logit difference (``d = one_hot(a) - one_hot(b)``);
* any task direction, e.g. the greater-than probability-difference direction.

Token strings are read the way the user means them (:func:`token_in_context`): tokenised as
they would be *inside the prompt*, so a word after a word gets its leading space (``"Mary"``
after ``"... gave it to"`` is the token ``" Mary"``). A user-named target whose token has a
negligible probability (< :data:`NEGLIGIBLE_PROB`) at the read-out position warns, naming the
likely intended token.

By default (:func:`default_logit_targets`) the engine takes the most likely next tokens at
the last position until their cumulative probability reaches ``desired_logit_prob``, at most
``max_n_logits`` of them; each target's weight is its probability.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass(frozen=True)
class Target:
    """A scalar read-out ``direction . logits[position]`` of the model."""

    direction: Float[Tensor, " d_vocab"]
    """Vector over the vocabulary."""
    position: int = -1
    """Token position (negative counts from the end)."""
    label: str = "target"
    """Human-readable name."""
    weight: float = 1.0
    """Weight in influence / pruning (the probability for default logit targets)."""
    token_id: int = -1
    """Token id when this is a single-token logit target, else -1."""
    answer_tokens: tuple[int, ...] = ()
    """Token ids the user means as the answer (a warning when their probability is negligible)."""

    def __post_init__(self) -> None:
        if self.direction.ndim != 1:
            raise ValueError(f"target direction must be a vector over the vocab, got shape {tuple(self.direction.shape)}")
        if not self.weight >= 0:
            raise ValueError(f"target weight must be >= 0, got {self.weight}")


def _decode(tokenizer, tok: int) -> str:
    if tokenizer is None:
        return str(tok)
    return tokenizer.decode([tok])


def _check_token(tok: int, d_vocab: int) -> int:
    if isinstance(tok, bool) or not 0 <= int(tok) < d_vocab:
        raise ValueError(f"target token id {tok!r} is not in the vocabulary (d_vocab={d_vocab})")
    return int(tok)


def logit_target(
    tok: int,
    d_vocab: int,
    *,
    position: int = -1,
    demean: bool = True,
    weight: float = 1.0,
    tokenizer=None,
) -> Target:
    """The logit of token ``tok`` (minus the mean logit when ``demean``)."""
    tok = _check_token(tok, d_vocab)
    d = torch.zeros(d_vocab)
    d[tok] = 1.0
    if demean:
        d -= 1.0 / d_vocab
    label = f"logit {_decode(tokenizer, tok)!r}"
    return Target(d, position=position, label=label, weight=weight, token_id=tok, answer_tokens=(tok,))


def logit_diff_target(
    tok_a: int, tok_b: int, d_vocab: int, *, position: int = -1, tokenizer=None
) -> Target:
    """``logit[tok_a] - logit[tok_b]``."""
    a, b = _check_token(tok_a, d_vocab), _check_token(tok_b, d_vocab)
    if a == b:
        raise ValueError(f"logit difference needs two different tokens, got {a} twice")
    d = torch.zeros(d_vocab)
    d[a] += 1.0
    d[b] -= 1.0
    label = f"logit {_decode(tokenizer, a)!r} - {_decode(tokenizer, b)!r}"
    return Target(d, position=position, label=label, answer_tokens=(a,))


def direction_target(
    direction: Float[Tensor, " d_vocab"], *, position: int = -1, label: str = "direction", weight: float = 1.0
) -> Target:
    """An arbitrary direction over the vocabulary (e.g. a task's metric direction)."""
    return Target(direction.detach().float().cpu(), position=position, label=label, weight=weight)


def default_logit_targets(
    logits: Float[Tensor, " d_vocab"],
    *,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    position: int = -1,
    demean: bool = True,
    tokenizer=None,
) -> list[Target]:
    """Most likely tokens until cumulative probability >= ``desired_logit_prob`` (<= max_n_logits)."""
    if max_n_logits < 1:
        raise ValueError(f"max_n_logits must be >= 1, got {max_n_logits}")
    if not 0.0 < desired_logit_prob <= 1.0:
        raise ValueError(f"desired_logit_prob must be in (0, 1], got {desired_logit_prob}")
    probs = torch.softmax(logits.detach().double(), dim=-1)
    top_p, top_i = probs.topk(min(max_n_logits, probs.shape[0]))
    cum = top_p.cumsum(0)
    n = int(torch.searchsorted(cum, torch.tensor(desired_logit_prob, dtype=cum.dtype)).item()) + 1
    n = min(n, top_p.shape[0])
    return [
        logit_target(
            int(top_i[i]), logits.shape[0], position=position, demean=demean,
            weight=float(top_p[i]), tokenizer=tokenizer,
        )
        for i in range(n)
    ]


def resolve_targets(
    targets: Sequence[Target | int | str] | Tensor | Target | None,
    last_logits: Float[Tensor, " d_vocab"],
    *,
    max_n_logits: int,
    desired_logit_prob: float,
    tokenizer=None,
    prompt: str | None = None,
) -> list[Target]:
    """Normalise the user's ``targets`` argument into a list of :class:`Target`.

    ``None`` -> default logit targets at the last position; a 1-D float tensor -> one
    direction; ints are token ids, strings single tokens as they would be tokenised right
    after ``prompt`` (:func:`token_in_context`; both -> demeaned logits at the last position,
    weighted by their probability). User-named answer tokens with a probability below
    :data:`NEGLIGIBLE_PROB` at the last position warn (:func:`warn_negligible`).
    """
    d_vocab = last_logits.shape[0]
    if targets is None:
        return default_logit_targets(
            last_logits, max_n_logits=max_n_logits, desired_logit_prob=desired_logit_prob,
            tokenizer=tokenizer,
        )
    if isinstance(targets, Target):
        targets = [targets]
    if isinstance(targets, Tensor):
        if targets.is_floating_point():
            targets = [direction_target(targets)]
        else:
            targets = [int(t) for t in targets.flatten().tolist()]
    probs = torch.softmax(last_logits.detach().double(), -1)
    out: list[Target] = []
    for t in targets:
        if isinstance(t, Target):
            if t.direction.shape[0] != d_vocab:
                raise ValueError(
                    f"target {t.label!r} has a direction of length {t.direction.shape[0]}, d_vocab={d_vocab}"
                )
            out.append(t)
            continue
        if isinstance(t, str):
            if tokenizer is None:
                raise ValueError(f"string target {t!r} needs a model with a tokenizer")
            t = token_in_context(tokenizer, t, prompt)
        if isinstance(t, int):
            tok = _check_token(t, d_vocab)
            out.append(logit_target(tok, d_vocab, weight=float(probs[tok]), tokenizer=tokenizer))
            continue
        raise ValueError(f"cannot interpret attribution target {t!r}")
    if not out:
        raise ValueError("no attribution targets given")
    for t in out:
        if t.position == -1:  # the probabilities are those of the last position
            warn_negligible(t, probs, tokenizer)
    return out


#: A user-named target token below this probability is almost surely not what was meant.
NEGLIGIBLE_PROB = 1e-4


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def token_in_context(tokenizer: Any, text: str, prompt: str | None = None) -> int:
    """The single token id of ``text`` as it would be tokenised right after ``prompt``.

    A word (``text`` starting with a letter) that follows a prompt ending in a non-space
    character gets the leading space it would have inside the prompt: ``"Mary"`` after
    ``"... gave it to"`` is ``" Mary"``. Digits and punctuation are kept as given (``"58"``
    after ``"... to the year 17"`` continues the number). With a prompt, the token is read off
    the tokenisation of ``prompt + text`` (so it is exactly the token the model would see);
    without one, ``text`` is encoded alone. Raises ``ValueError`` naming ``text`` when it is
    not a single token.
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"target token string must be a non-empty string, got {text!r}")
    piece = text
    if prompt and not prompt[-1].isspace() and text[0].isalpha():
        piece = " " + text
    ids: list[int] = []
    if prompt:
        base, full = _encode(tokenizer, prompt), _encode(tokenizer, prompt + piece)
        if full[: len(base)] == base:
            ids = full[len(base):]
    if not ids:
        ids = _encode(tokenizer, piece)
    if len(ids) != 1:
        shown = f"{piece!r} (as inside the prompt)" if piece != text else repr(text)
        raise ValueError(f"target string {shown} is not a single token (ids {ids})")
    return int(ids[0])


def _variants(tokenizer: Any, tok: int) -> list[int]:
    """Single-token spellings of ``tok`` with / without a leading space."""
    s = tokenizer.decode([tok])
    out = []
    for alt in (s[1:] if s[:1].isspace() else " " + s, s.strip()):
        if alt and alt != s:
            ids = _encode(tokenizer, alt)
            if len(ids) == 1 and ids[0] != tok:
                out.append(int(ids[0]))
    return out


def warn_negligible(
    target: Target, probs: Float[Tensor, " d_vocab"], tokenizer: Any = None, *, threshold: float = NEGLIGIBLE_PROB
) -> None:
    """Warn (``UserWarning``) when an answer token of ``target`` has probability < ``threshold``.

    The message names the likely intended token: the same word with / without its leading
    space when that one is more likely, else the model's most likely next token.
    """
    for tok in target.answer_tokens:
        p = float(probs[tok])
        if p >= threshold:
            continue
        cands = _variants(tokenizer, tok) if tokenizer is not None else []
        best = max(cands, key=lambda i: float(probs[i]), default=None)
        if best is None or float(probs[best]) < threshold:
            best = int(probs.argmax())
        name = (lambda i: repr(_decode(tokenizer, i)))
        warnings.warn(
            f"target {target.label!r}: token {name(tok)} (id {tok}) has probability {p:.2g} at the "
            f"read-out position; the likely intended token is {name(best)} (id {best}, probability "
            f"{float(probs[best]):.3g})",
            UserWarning,
            stacklevel=3,
        )


def encode_direction(direction: Float[Tensor, " d_vocab"]) -> dict[str, Any]:
    """A compact JSON form of a target direction: its most common value plus the exceptions."""
    d = direction.detach().double().cpu()
    vals, counts = torch.unique(d, return_counts=True)
    offset = float(vals[counts.argmax()])
    idx = torch.nonzero(d != offset).flatten()
    return {"d_vocab": int(d.shape[0]), "offset": offset, "indices": idx.tolist(), "values": d[idx].tolist()}


def decode_direction(data: dict[str, Any]) -> Float[Tensor, " d_vocab"]:
    """Inverse of :func:`encode_direction` (float32)."""
    try:
        d = torch.full((int(data["d_vocab"]),), float(data["offset"]), dtype=torch.float64)
        d[torch.tensor(data["indices"], dtype=torch.long)] = torch.tensor(data["values"], dtype=torch.float64)
    except (KeyError, TypeError, IndexError, RuntimeError) as err:
        raise ValueError(f"invalid stored target direction: {err}") from err
    return d.float()
