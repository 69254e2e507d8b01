"""One way to name a model and its dictionaries, for every command and for Python.

``ModelOptions`` is the shared option set (``--model``, ``--transcoders``, ``--device``,
``--dtype``); :func:`resolve` turns it into a loaded model and :class:`TranscoderSet`:

* model: ``None`` or ``"organism"`` is the bundled organism; anything else goes through
  :func:`tc_circuits.models.loading.load_model` (a TransformerLens name or a local Hugging
  Face folder);
* dictionaries: an organism kind (``skip_transcoder``, ``transcoder``, ``sae``) names the
  shipped ones; any other value is a folder (or Dunefsky ``.pt`` file) in any supported
  format, detected by :func:`tc_circuits.formats.detect.detect_format` and checked against
  the model; ``None`` is the organism's skip transcoders (other models must name theirs).

For commands that read a graph (``view``, ``intervene``), :func:`resolve_for_graph` defaults
to the model and dictionaries the graph records (its ``sources``, else the shipped organism
dictionaries whose content hash matches) and refuses mismatching ones
(:mod:`tc_circuits.graph.provenance`).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

ORGANISM = "organism"
ORGANISM_KINDS = ("skip_transcoder", "transcoder", "sae")


@dataclass(frozen=True)
class ModelOptions:
    """Which model and dictionaries to load, and where (``--model --transcoders --device --dtype``)."""

    model: str | None = None
    """TransformerLens model name or local Hugging Face folder; None or 'organism' = the bundled organism (commands reading a graph: the graph's recorded model)."""
    transcoders: str | None = None
    """Dictionaries: a folder in any supported format (tc_circuits, circuit-tracer, SAELens, sparsify, Dunefsky, GemmaScope; auto-detected) or an organism kind (skip_transcoder, transcoder, sae); None = the organism's skip transcoders (commands reading a graph: the recorded ones)."""
    device: str | None = None
    """cpu, cuda or mps; None = the best available (cuda, then mps, then cpu)."""
    dtype: Literal["float32", "float64", "bfloat16", "float16"] | None = None
    """Precision to load the model (and dictionaries) in; None = float32 (commands reading a graph: the recorded one)."""

    def __post_init__(self) -> None:
        if self.device is not None and self.device.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ValueError(f"--device must be cpu, cuda or mps, got {self.device!r}")

    @property
    def is_organism(self) -> bool:
        return self.model in (None, ORGANISM)

    @property
    def torch_dtype_name(self) -> str:
        return self.dtype or "float32"


class Resolved(NamedTuple):
    """A loaded model, its dictionaries and how they were named (recorded in graphs)."""

    model: Any
    transcoders: Any
    sources: dict[str, Any]


def best_device() -> str:
    """``cuda`` if available, else ``mps``, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def load_model_from(opts: ModelOptions) -> Any:
    """The model ``opts`` names, on its device and in its dtype.

    TransformerLens' loading chatter ("Moving model to device") goes to stderr, so a command's
    stdout stays machine-readable (``--json``).
    """
    with contextlib.redirect_stdout(sys.stderr):
        return _load_model(opts)


def _load_model(opts: ModelOptions) -> Any:
    import torch

    device = opts.device or best_device()
    if opts.is_organism:
        from tc_circuits.organism import load_organism

        model = load_organism(device=device)
        if opts.torch_dtype_name != "float32":
            model = model.to(getattr(torch, opts.torch_dtype_name))
        return model
    from tc_circuits.models.loading import load_model

    return load_model(opts.model, device=device, dtype=opts.torch_dtype_name)


def transcoder_spec(opts: ModelOptions) -> str:
    """The dictionaries ``opts`` names (``None`` -> the organism's skip transcoders)."""
    if opts.transcoders is not None:
        return opts.transcoders
    if not opts.is_organism:
        raise ValueError(f"--model {opts.model!r} needs --transcoders (the shipped ones fit only the organism)")
    return "skip_transcoder"


def load_transcoders_from(spec: str, model: Any, *, dtype: str = "float32", hf_model: Any = None) -> Any:
    """Load dictionaries ``spec`` (an organism kind or a checkpoint path) checked against ``model``.

    Per-layer dictionaries come back as a ``TranscoderSet``; a cross-layer transcoder (ours or
    circuit-tracer's) as its per-layer views ``{layer: CLTLayer}``, which every command takes too.

    ``hf_model``: the model's unprocessed weights (its local Hugging Face folder), for files that
    read the MLP input after the norm's gain (sparsify, circuit-tracer ``mlp.hook_in``, GemmaScope 2).
    """
    import torch

    from tc_circuits.coders.clt import CrossLayerTranscoder
    from tc_circuits.coders.transcoder import Transcoder, TranscoderSet

    if spec in ORGANISM_KINDS and not Path(spec).exists():
        from tc_circuits.organism import load_organism_transcoders

        if model.cfg.model_name != _organism_name():
            raise ValueError(f"--transcoders {spec!r} names the organism's shipped dictionaries, "
                             f"but the model is {model.cfg.model_name!r}")
        tcs = load_organism_transcoders(spec, model=model)
    else:
        from tc_circuits.formats import detect_format, load_any
        from tc_circuits.models.model_info import weight_processing

        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(f"--transcoders {spec!r}: no such folder or file (or organism kind {ORGANISM_KINDS})")
        fmt = detect_format(path)
        kwargs = {"processing": weight_processing(model)} if fmt in ("circuit-tracer", "sparsify", "dunefsky") else {}
        if fmt == "gemmascope":
            kwargs = {"model": model}
        if hf_model is not None and fmt in ("sparsify", "saelens", "gemmascope", "circuit-tracer"):
            from tc_circuits.formats.circuit_tracer_clt import is_circuit_tracer_clt

            if fmt != "circuit-tracer" or not is_circuit_tracer_clt(path):
                kwargs["hf_model"] = hf_model
        loaded = load_any(path, format=fmt, **kwargs)
        if isinstance(loaded, CrossLayerTranscoder):  # one dictionary over every layer
            from tc_circuits.evaluation.splice import as_transcoder_dict

            loaded.check_compatible(model)
            return as_transcoder_dict(loaded.to(device=next(model.parameters()).device, dtype=getattr(torch, dtype)))
        tcs = TranscoderSet({loaded.cfg.layer: loaded}) if isinstance(loaded, Transcoder) else TranscoderSet(loaded)
        for tc in tcs.values():
            tc.check_compatible(model)
    device = next(model.parameters()).device
    for layer, tc in list(tcs.items()):
        tcs[layer] = tc.to(device=device, dtype=getattr(torch, dtype))
    return tcs


def _organism_name() -> str:
    from tc_circuits.organism.tokenizer import ORGANISM_NAME

    return ORGANISM_NAME


def resolve(opts: ModelOptions = ModelOptions()) -> Resolved:
    """Load the model and dictionaries ``opts`` names."""
    spec = transcoder_spec(opts)  # before the (slow) model load: a missing --transcoders fails fast
    model = load_model_from(opts)
    tcs = load_transcoders_from(spec, model, dtype=opts.torch_dtype_name, hf_model=_hf_folder(opts))
    return Resolved(model, tcs, sources_of(opts, spec))


def _hf_folder(opts: ModelOptions) -> str | None:
    """``--model`` when it is a local Hugging Face folder (its unprocessed norm gains)."""
    from tc_circuits.models.loading import is_local_model_dir

    return opts.model if opts.model and is_local_model_dir(opts.model) else None


def sources_of(opts: ModelOptions, spec: str) -> dict[str, Any]:
    """How to find the model and dictionaries again (absolute paths for local files)."""

    def norm(x: str) -> str:
        return str(Path(x).resolve()) if Path(x).exists() else x

    return {"model": ORGANISM if opts.is_organism else norm(str(opts.model)), "transcoders": norm(spec),
            "dtype": opts.torch_dtype_name}


def resolve_for_graph(graph: Any, opts: ModelOptions = ModelOptions()) -> Resolved:
    """Model and dictionaries for a saved graph: the given ones, checked, else the recorded ones.

    Raises :class:`tc_circuits.graph.provenance.ProvenanceError` when the model or the
    dictionaries differ from those the graph records, and ``ValueError`` when no dictionaries
    were given and the recorded ones cannot be found.
    """
    from tc_circuits.graph.provenance import check_graph_model, check_graph_transcoders

    sources = graph.metadata.get("sources") if isinstance(graph.metadata.get("sources"), dict) else {}
    if opts.model is None and sources.get("model"):
        opts = replace(opts, model=sources["model"])
    if opts.dtype is None and sources.get("dtype"):
        opts = replace(opts, dtype=sources["dtype"])
    model = load_model_from(opts)
    check_graph_model(graph, model)
    if opts.transcoders is not None:
        spec = opts.transcoders
        tcs = load_transcoders_from(spec, model, dtype=opts.torch_dtype_name, hf_model=_hf_folder(opts))
        check_graph_transcoders(graph, tcs, what=f"the dictionaries {spec!r}")
        return Resolved(model, tcs, sources_of(opts, spec))
    candidates = []
    if sources.get("transcoders"):
        candidates.append(str(sources["transcoders"]))
    if model.cfg.model_name == _organism_name():
        candidates += [k for k in ORGANISM_KINDS if k not in candidates]
    tried = []
    for spec in candidates:
        try:
            tcs = load_transcoders_from(spec, model, dtype=opts.torch_dtype_name, hf_model=_hf_folder(opts))
        except (FileNotFoundError, ValueError) as err:
            tried.append(f"{spec}: {err}")
            continue
        try:
            check_graph_transcoders(graph, tcs)
        except ValueError as err:
            tried.append(f"{spec}: {err}")
            continue
        return Resolved(model, tcs, sources_of(opts, spec))
    raise ValueError(
        "cannot find the dictionaries this graph was computed with; pass --transcoders. Tried: "
        + ("; ".join(tried) if tried else "nothing recorded")
    )


__all__ = [
    "ModelOptions",
    "ORGANISM",
    "ORGANISM_KINDS",
    "Resolved",
    "best_device",
    "load_model_from",
    "load_transcoders_from",
    "resolve",
    "resolve_for_graph",
    "sources_of",
    "transcoder_spec",
]
