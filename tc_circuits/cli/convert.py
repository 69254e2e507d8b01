"""``tc-circuits convert SRC DST``: convert another project's checkpoint to ours (or back).

The source format is detected from its files unless ``--from`` is given; ``--to`` picks
``tc_circuits`` (default), ``circuit-tracer``, ``saelens`` or ``sparsify``. sparsify MLP
transcoders (both ways), circuit-tracer sets on its ``mlp.hook_in`` (import) and sparsify /
circuit-tracer ``mlp.hook_in`` exports need the Hugging Face model folder (``--hf-model``)
to map the LayerNorm exactly.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tc_circuits.cli import HELP
from tc_circuits.cli.dataclass_args import add_dataclass_args, dataclass_from_args

TARGETS = ("tc_circuits", "circuit-tracer", "saelens", "sparsify")


@dataclass(frozen=True)
class ConvertOptions:
    """Options of ``tc-circuits convert``."""

    src_format: Literal["tc_circuits", "circuit-tracer", "sparsify", "saelens", "dunefsky", "gemmascope"] | None = None
    """Format of SRC (default: detected from its files)."""
    to: Literal["tc_circuits", "circuit-tracer", "saelens", "sparsify"] = "tc_circuits"
    """Format to write DST in."""
    hf_model: str | None = None
    """Local Hugging Face model folder: its MLP-input norm gains (and LayerNorm biases) map inputs read
    after the norm (sparsify MLP transcoders, circuit-tracer ``mlp.hook_in``, GemmaScope 2) exactly."""
    fold_ln: bool = True
    """The target TransformerLens model folds LayerNorm (sparsify, Dunefsky, circuit-tracer)."""
    center_writing_weights: bool = True
    """The target TransformerLens model centres the weights writing to the residual stream."""
    center_unembed: bool = True
    """The target TransformerLens model centres the unembedding."""
    model_name: str | None = None
    """Model name to record (sparsify checkpoints do not name their model)."""
    allow_topk: bool = False
    """Write TopK sets for circuit-tracer even when the installed one cannot read them (upstream
    circuit-tracer reads ``activation: topk``; the PyPI 0.5.0 release would read ReLU)."""
    progress: bool = True
    """Accepted so that every command takes --no-progress (a conversion shows no progress bar)."""

    def __post_init__(self) -> None:
        if self.to not in TARGETS:
            raise ValueError(f"--to must be one of {TARGETS}, got {self.to!r}")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("convert", help=HELP["convert"])
    parser.add_argument("src", help="source checkpoint (folder, or a .pt file)")
    parser.add_argument("dst", help="destination folder")
    add_dataclass_args(parser, ConvertOptions, exclude=("src_format",))
    parser.add_argument("--from", dest="src_format", default=argparse.SUPPRESS,
                        choices=["tc_circuits", "circuit-tracer", "sparsify", "saelens", "dunefsky", "gemmascope"],
                        help="format of SRC (default: detected from its files)")
    parser.set_defaults(func=run)


def convert(src: str | Path, dst: str | Path, opts: ConvertOptions = ConvertOptions()) -> Path:
    """Convert ``src`` to ``dst`` as ``opts`` says; returns ``dst``."""
    from tc_circuits.formats import detect_format, load_any, save_circuit_tracer, save_saelens, save_sparsify
    from tc_circuits.coders.transcoder import Transcoder, TranscoderSet

    fmt = opts.src_format or detect_format(src)
    processing = {
        "fold_ln": opts.fold_ln,
        "center_writing_weights": opts.center_writing_weights,
        "center_unembed": opts.center_unembed,
    }
    kwargs: dict = {}
    if fmt in ("sparsify", "dunefsky", "circuit-tracer"):
        kwargs["processing"] = processing
    hf_weights = None
    if opts.hf_model is not None:
        from tc_circuits.models.loading import is_local_model_dir

        if not is_local_model_dir(opts.hf_model):
            raise FileNotFoundError(f"--hf-model {opts.hf_model!r} is not a Hugging Face model folder (config.json + weights)")
        hf_weights = opts.hf_model  # read lazily: only the norm tensors
    if fmt == "sparsify":
        kwargs["model_name"] = opts.model_name
    if fmt in ("sparsify", "circuit-tracer", "saelens", "gemmascope") and hf_weights is not None:
        kwargs["hf_model"] = hf_weights
    loaded = load_any(src, format=fmt, **kwargs)
    dst = Path(dst)
    if opts.to == "tc_circuits":
        loaded.save(dst)
    elif opts.to == "circuit-tracer":
        tset = loaded if isinstance(loaded, TranscoderSet) else TranscoderSet({loaded.cfg.layer: loaded})
        save_circuit_tracer(tset, dst, hf_model=hf_weights, allow_topk=opts.allow_topk or None)
    elif opts.to == "sparsify":
        save_sparsify(loaded, dst, hf_model=hf_weights)
    else:
        if isinstance(loaded, Transcoder):
            save_saelens(loaded, dst)
        else:
            for layer, tc in sorted(loaded.items()):
                save_saelens(tc, dst / f"layer_{layer}")
    return dst


def run(args: argparse.Namespace) -> int:
    opts = dataclass_from_args(ConvertOptions, args)
    out = convert(args.src, args.dst, opts)
    print(f"wrote {opts.to} checkpoint to {out}")
    return 0
