"""``ActivationStore``: one forward pass feeds every transcoder's (x_in, y_out) pairs.

Phases of a *fill*:

1. read token batches from the (replayable) token factory until ``buffer_tokens`` tokens are
   collected; for each batch run ``model.run_with_cache`` once with ``names_filter`` = only the
   needed hooks and ``stop_at_layer`` = last needed layer + 1 (nothing after it is computed);
2. drop the BOS position (optional), flatten to ``[tokens, d]``, refuse NaN/inf;
3. shuffle all rows with one permutation drawn from a ``torch.Generator`` seeded by
   ``(seed, fill_index)`` — the same permutation for every pair, so pairs stay aligned — and
   keep a whole number of batches (the remainder is dropped);
4. yield ``{key: PairBatch(x, y)}`` batches until the buffer is empty, then fill again.

With ``prefetch=True`` the next fill (phases 1-3) runs in a background thread while the
current buffer is consumed, so training does not stall at refills (torch releases the GIL
inside its kernels; on a machine with a spare core the two overlap). The batches are the same
as without prefetching, bit for bit, and so is the resumable state (``tests/test_activation_store.py``).
The thread runs the model with hooks: nothing else may run the model while the store is
iterated; :meth:`ActivationStore.close` (also called on resume) waits for it.

Because a fill is a pure function of ``(token batches consumed, fill_index)``, the store's
resumable state is three integers (:meth:`ActivationStore.state_dict`): a resumed store skips
the consumed batches, recomputes the same buffer and continues at the same offset. The token
factory is restarted (a new epoch) when its stream ends.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from tc_circuits.training.data import TokenFactory
from tc_circuits.models.sites import Site

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer


class PairBatch(NamedTuple):
    """One batch of aligned training pairs."""

    x: Float[Tensor, "batch d_in"]
    """Transcoder input activations (rows are tokens)."""
    y: Float[Tensor, "batch d_out"]
    """Target output activations, same rows."""


class _Replay:
    """Counts batches drawn from a token factory; restarts it when the stream ends."""

    def __init__(self, factory: TokenFactory):
        self.factory = factory
        self.consumed = 0
        self._it = iter(factory())
        self._fresh = True

    def next(self) -> Tensor:
        try:
            batch = next(self._it)
        except StopIteration:
            if self._fresh:
                raise ValueError("the token source yielded no batches") from None
            self._it, self._fresh = iter(self.factory()), True
            return self.next()
        self._fresh = False
        self.consumed += 1
        return batch

    def skip(self, n: int) -> None:
        for _ in range(n):
            self.next()


class _Cancelled(Exception):
    """A background fill stopped by :meth:`ActivationStore.close`."""


def _fill_seed(seed: int, fill_index: int) -> int:
    return (seed * 1_000_003 + fill_index * 7_919 + 12_345) % (2**63 - 1)


class ActivationStore:
    """Shuffled buffer of (x_in, y_out) pairs for several transcoders, from one forward pass.

    Args:
        model: the HookedTransformer (never modified; run under ``torch.no_grad``).
        pairs: ``{key: (input_site, output_site)}``, sites as hook names or :class:`Site`
            (an SAE uses the same site twice; it is cached once).
        token_factory: zero-argument callable returning a fresh iterator of ``[batch, seq]``
            token tensors, identical on every call (see :mod:`tc_circuits.training.data`).
        batch_size: rows (tokens) per yielded batch.
        buffer_tokens: tokens per fill (at least ``batch_size``).
        exclude_bos: drop sequence position 0 (the BOS token) from every row.
        seed: seeds the per-fill shuffling generators.
        device, dtype: where and how the buffer is stored (default: model device, float32).
        prefetch: compute the next fill in a background thread while this one is consumed
            (twice the buffer memory; same batches).
    """

    def __init__(
        self,
        model: HookedTransformer,
        pairs: Mapping[Hashable, tuple[str | Site, str | Site]],
        token_factory: TokenFactory,
        *,
        batch_size: int,
        buffer_tokens: int,
        exclude_bos: bool = True,
        seed: int = 0,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        prefetch: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if buffer_tokens < batch_size:
            raise ValueError(f"buffer_tokens={buffer_tokens} must be >= batch_size={batch_size}")
        if not pairs:
            raise ValueError("pairs is empty: nothing to store")
        self.model = model
        self.pairs = {
            key: (Site.parse(i).check(model).hook_for(model), Site.parse(o).check(model).hook_for(model))
            for key, (i, o) in pairs.items()
        }
        self.hooks = sorted({h for pair in self.pairs.values() for h in pair})
        self.stop_at_layer = max(Site.parse(h).layer for h in self.hooks) + 1
        self.token_factory = token_factory
        self.batch_size = batch_size
        self.buffer_tokens = buffer_tokens
        self.exclude_bos = exclude_bos
        self.seed = seed
        self.device = torch.device(device) if device is not None else model.cfg.device
        self.dtype = dtype
        self._replay = _Replay(token_factory)
        self._buffer: dict[str, Tensor] | None = None
        self._fill_start = 0
        self._fill_index = 0  # index of the next fill when _buffer is None
        self._offset = 0
        self._resume_offset = 0
        self.prefetch = prefetch
        self._thread: threading.Thread | None = None
        self._next: tuple[int, dict[str, Tensor]] | BaseException | None = None
        self._next_start = 0
        self._cancel = threading.Event()

    # ----------------------------------------------------------------- forward
    @torch.no_grad()
    def activations(self, tokens: Tensor) -> dict[str, Float[Tensor, "rows d"]]:
        """``{hook: [rows, d]}`` for one token batch (BOS dropped if configured)."""
        tokens = torch.as_tensor(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"token batches must be [batch, seq], got shape {tuple(tokens.shape)}")
        if self.exclude_bos and tokens.shape[1] < 2:
            raise ValueError("exclude_bos needs sequences of length >= 2")
        _, cache = self.model.run_with_cache(
            tokens.long().to(self.model.cfg.device),
            names_filter=list(self.hooks),
            stop_at_layer=self.stop_at_layer,
            return_cache_object=False,
        )
        out = {}
        for hook in self.hooks:
            act = cache[hook]
            if self.exclude_bos:
                act = act[:, 1:]
            act = act.reshape(-1, act.shape[-1]).to(self.device, self.dtype)
            if not torch.isfinite(act).all():
                bad = int((~torch.isfinite(act)).sum())
                raise ValueError(
                    f"non-finite activations (NaN/inf) at hook {hook!r}: {bad} values in token "
                    f"batch #{self._replay.consumed - 1}; check the model weights and inputs"
                )
            out[hook] = act
        return out

    def _compute_fill(self, fill_index: int) -> tuple[int, dict[str, Tensor]]:
        """Phases 1-3 for fill ``fill_index``: ``(first batch consumed, shuffled buffer)``."""
        start = self._replay.consumed
        chunks: dict[str, list[Tensor]] = {h: [] for h in self.hooks}
        n = 0
        while n < self.buffer_tokens:
            if self._cancel.is_set():
                raise _Cancelled
            acts = self.activations(self._replay.next())
            for h in self.hooks:
                chunks[h].append(acts[h])
            n += acts[self.hooks[0]].shape[0]
        n_keep = n // self.batch_size * self.batch_size
        gen = torch.Generator().manual_seed(_fill_seed(self.seed, fill_index))
        perm = torch.randperm(n, generator=gen)[:n_keep].to(self.device)
        return start, {h: torch.cat(chunks[h])[perm] for h in self.hooks}

    def _prefetch_run(self, fill_index: int) -> None:
        try:
            with torch.no_grad():
                self._next = self._compute_fill(fill_index)
        except BaseException as exc:  # re-raised in the consuming thread
            self._next = exc

    def _start_prefetch(self) -> None:
        self._next, self._next_start = None, self._replay.consumed
        self._cancel.clear()
        self._thread = threading.Thread(
            target=self._prefetch_run, args=(self._fill_index + 1,), name="tc-activation-prefetch", daemon=True
        )
        self._thread.start()

    def _take_prefetched(self) -> tuple[int, dict[str, Tensor]] | None:
        if self._thread is None:
            return None
        self._thread.join()
        self._thread, result, self._next = None, self._next, None
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        """Stop a running background fill and drop it; the stream position is kept (the next
        fill starts where the dropped one did). Call it before anything else runs the model."""
        if self._thread is not None:
            self._cancel.set()
            self._thread.join()
            self._cancel.clear()
            self._thread, self._next = None, None
            self._replay = _Replay(self.token_factory)  # rewind to the dropped fill's start
            self._replay.skip(self._next_start)

    def _fill(self) -> None:
        got = self._take_prefetched()
        self._fill_start, self._buffer = got if got is not None else self._compute_fill(self._fill_index)
        self._offset = self._resume_offset
        self._resume_offset = 0
        if self.prefetch:
            self._start_prefetch()

    # ----------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[dict[Hashable, PairBatch]]:
        return self

    def __next__(self) -> dict[Hashable, PairBatch]:
        if self._buffer is None:
            self._fill()
        assert self._buffer is not None
        start = self._offset
        stop = start + self.batch_size
        batch = {
            key: PairBatch(self._buffer[i][start:stop], self._buffer[o][start:stop])
            for key, (i, o) in self.pairs.items()
        }
        self._offset = stop
        if stop >= self._buffer[self.hooks[0]].shape[0]:
            self._buffer = None
            self._fill_index += 1
        return batch

    def buffer_outputs(self) -> dict[Hashable, Float[Tensor, "rows d_out"]]:
        """The current buffer's outputs ``{key: y}`` (fills the buffer if needed)."""
        if self._buffer is None:
            self._fill()
        assert self._buffer is not None
        return {key: self._buffer[o] for key, (_, o) in self.pairs.items()}

    # ----------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, int]:
        """Stream position: batches consumed before the current fill, fill index, offset."""
        if self._buffer is None:
            consumed = self._replay.consumed
            if self._thread is not None:  # the next fill starts where the prefetched one did
                consumed = self._next_start
            return {
                "consumed": consumed,
                "fill_index": self._fill_index,
                "offset": self._resume_offset,
            }
        return {
            "consumed": self._fill_start,
            "fill_index": self._fill_index,
            "offset": self._offset,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restart the token stream and position the store at ``state``."""
        self.close()
        self._replay = _Replay(self.token_factory)
        self._replay.skip(int(state["consumed"]))
        self._buffer = None
        self._fill_index = int(state["fill_index"])
        self._resume_offset = int(state["offset"])
