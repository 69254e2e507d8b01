"""Load foreign ``torch.save`` pickles without executing their code.

A pickle can name any importable callable and call it while loading (``__reduce__``), so
loading an untrusted ``.pt`` with plain ``torch.load`` can run arbitrary code. Here every load
goes through ``torch.load(weights_only=True)``: PyTorch's restricted unpickler, which only
builds tensors, containers and primitive types. Foreign config classes (e.g. a training
``LanguageModelSAERunnerConfig``) are *not* imported: their pickled name is mapped to
:class:`ForeignRecord`, an inert attribute bag that only stores the pickled state. Anything else
is refused with a ``ValueError`` before it runs.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
from collections.abc import Iterable
from typing import Any

import torch


class ForeignRecord:
    """Inert stand-in for a pickled foreign object: just its attributes, no behaviour."""

    def as_dict(self) -> dict[str, Any]:
        """The object's pickled attributes."""
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"ForeignRecord({self.__dict__!r})"


def safe_torch_load(
    path: str | os.PathLike, *, foreign_classes: Iterable[str] = ()
) -> Any:
    """``torch.load(path, weights_only=True)`` with ``foreign_classes`` read as :class:`ForeignRecord`.

    Args:
        path: a ``torch.save`` file (zip or legacy format; ``.gz``: gzip-compressed).
        foreign_classes: fully qualified names (``"pkg.module.Class"``) of plain data classes
            whose instances may appear; they are rebuilt as :class:`ForeignRecord`, never imported.

    Raises:
        ValueError: the file needs any other global (a function, a class not listed, e.g.
            ``os.system``) or is not a valid torch pickle. Nothing in it has run.
    """
    allowed = [(ForeignRecord, name) for name in foreign_classes]
    source: Any = os.fspath(path)
    try:
        if source.endswith(".gz"):  # gzip-compressed pickles (``.pkl.gz``): decompressed in memory
            with gzip.open(source, "rb") as fh:
                source = io.BytesIO(fh.read())
        with torch.serialization.safe_globals(allowed):
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"refusing to load {os.fspath(path)!r}: it is not a plain weights pickle "
            f"(the restricted unpickler stopped at: {str(err).splitlines()[0]})"
        ) from err
    except (RuntimeError, EOFError, OSError, gzip.BadGzipFile) as err:
        raise ValueError(f"cannot read {os.fspath(path)!r} as a torch checkpoint: {err}") from err


__all__ = ["ForeignRecord", "safe_torch_load"]
