"""Temporary forward hooks that are always removed, even by an asynchronous KeyboardInterrupt.

TransformerLens' ``model.hooks()`` removes the hooks it tracks, but ``HookPoint.add_hook``
registers the PyTorch hook *before* it records the handle: an interrupt between the two
leaves a hook the model no longer knows about, and it changes every later forward pass.
:func:`temporary_hooks` snapshots the PyTorch hook dictionaries of the hook points it
touches and, on exit, removes every hook that was not there before (tracked or not), then
drops the stale handles. An interrupt that lands during the clean-up itself restarts it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any


def _snapshot(points) -> dict[int, tuple[Any, set, list]]:
    return {
        id(hp): (hp, set(hp._forward_hooks.keys()), list(hp.fwd_hooks))
        for hp in points if hasattr(hp, "_forward_hooks") and hasattr(hp, "fwd_hooks")
    }


def _restore(snap: dict[int, tuple[Any, set, list]]) -> None:
    for hp, keys, handles in snap.values():
        for key in [k for k in hp._forward_hooks.keys() if k not in keys]:
            hp._forward_hooks.pop(key, None)
            getattr(hp, "_forward_hooks_with_kwargs", {}).pop(key, None)
            getattr(hp, "_forward_hooks_always_called", {}).pop(key, None)
        hp.fwd_hooks[:] = [h for h in hp.fwd_hooks if h in handles]


@contextmanager
def temporary_hooks(model, fwd_hooks: Sequence[tuple[str, Callable]]) -> Iterator[None]:
    """Add ``fwd_hooks`` (``(hook name, fn)``) to ``model``'s hook points for the ``with`` body."""
    hook_dict = getattr(model, "hook_dict", {})
    snap = _snapshot([hook_dict[name] for name, _ in fwd_hooks if isinstance(name, str) and name in hook_dict])
    try:
        with model.hooks(fwd_hooks=list(fwd_hooks)):  # TransformerLens' context levels, as before
            yield
    finally:
        for _ in range(100):  # an interrupt during clean-up restarts it
            try:
                _restore(snap)
                break
            except KeyboardInterrupt:
                continue


@contextmanager
def hooks_restored(model) -> Iterator[None]:
    """On exit, remove every forward hook added to any of ``model``'s hook points in the body.

    For code that adds hooks through TransformerLens (``run_with_cache``, ``run_with_hooks``)
    and must not leak one when interrupted.
    """
    snap = _snapshot(model.hook_dict.values())
    try:
        yield
    finally:
        for _ in range(100):
            try:
                _restore(snap)
                break
            except KeyboardInterrupt:
                continue


__all__ = ["hooks_restored", "temporary_hooks"]
