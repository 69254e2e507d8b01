"""circuit-tracer per-layer transcoder sets: ``config.yaml`` + ``layer_{i}.safetensors``.

Layout (circuit-tracer ``load_transcoder_set`` / ``SingleLayerTranscoder``)::

    config.yaml            model_name, model_kind: transcoder_set, scan,
                           feature_input_hook / feature_output_hook (relative to blocks.{L}),
                           activation (relu | topk; absent: JumpReLU if the files hold a
                           threshold, else ReLU), k (TopK), transcoders: [layer files]
    layer_{i}.safetensors  W_enc [n, d] (encode = F.linear(x, W_enc, b_enc)), b_enc [n],
                           W_dec [n, d], b_dec [d], W_skip [d, d] optional (x @ W_skip.T),
                           activation_function.threshold [n] (JumpReLU: z * (z > t))

circuit-tracer opens the ``transcoders`` entries as they are written (relative ones against
the working directory), so the exporter writes absolute paths; the importer also accepts
entries relative to the config file and, for a moved folder, the file name beside it.

**Conventions at the boundary.** circuit-tracer loads its models *unprocessed*
(``fold_ln=False, center_writing_weights=False``): its ``mlp.hook_in`` is the LayerNorm output
``n(x) * w + b`` (gain and bias included) and ``mlp.hook_out`` the uncentred MLP output.
TransformerLens' ``ln2.hook_normalized`` is ``n(x)`` under any processing, and with
``center_writing_weights`` ``hook_mlp_out`` is the MLP output minus its mean. So:

* import of ``mlp.hook_in`` folds ``w``/``b`` exactly into encoder and skip
  (needs the unprocessed LayerNorm weights, ``hf_model=``); the decoder is centred when the
  target model has ``center_writing_weights``;
* export writes ``feature_input_hook: ln2.hook_normalized`` (exact: the same ``n(x)`` in
  circuit-tracer's unprocessed model) or, given ``hf_model=``, unfolds ``w``/``b`` and writes
  ``mlp.hook_in``. A centred decoder is written as is: the mean of the MLP output, which it
  cannot reconstruct, is invisible to every LayerNorm downstream (in circuit-tracer it lands
  in the error node, whose edges it does not change).

A ``tc_circuits`` block in ``config.yaml`` (ignored by circuit-tracer) keeps the full model
name, ``d_model``, the processing flags and what was unfolded, so export -> import gives the
original transcoders back (bit-exact unless a LayerNorm was unfolded and folded again).

TopK is circuit-tracer's ``activation: topk`` + ``k`` (upstream PR #94, on ``main``). The PyPI
0.5.0 wheel predates it and would read such a file as ReLU, so TopK export is refused unless
the installed circuit-tracer reads it or ``allow_topk=True`` says the reader will.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from tc_circuits.coders.transcoder import Transcoder, TranscoderSet
from tc_circuits.fileio import atomic_write
from tc_circuits.validate import safe_join
from tc_circuits.formats._common import (
    build,
    center_output,
    check_shape,
    finite_or_raise,
    fold_norm,
    ln2_gain_bias,
    make_config,
    processing_from,
    require,
    threshold_to_log,
    tl_model_name,
    unfold_input_affine,
)
from tc_circuits.formats.family_sites import check_family, check_width, family_of_name, output_site, tl_hook
from tc_circuits.formats.retarget import retarget
from tc_circuits.models.norm_gains import WeightSource, has_post_mlp_norm, module_family
from tc_circuits.models.sites import Site

CONFIG_FILE = "config.yaml"

#: circuit-tracer's relative hook names -> our site kinds (others are TransformerLens names).
_HOOK_ALIASES = {"mlp.hook_in": "mlp_in", "mlp.hook_out": "mlp_out"}
_THRESHOLD_KEYS = ("activation_function.threshold", "threshold")


def _site(hook: str, layer: int, source: str) -> Site:
    if hook in _HOOK_ALIASES:
        return Site(layer, _HOOK_ALIASES[hook])
    try:
        return Site.parse(f"blocks.{layer}.{hook}")
    except ValueError as err:
        raise ValueError(f"{source}: unsupported hook {hook!r}: {err}") from err


def _relative(site: Site) -> str:
    return site.hook_name[len(f"blocks.{site.layer}."):]


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.yaml`` of a circuit-tracer transcoder set (checked)."""
    cfg_path = Path(path) / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no circuit-tracer {CONFIG_FILE} in {path}")
    try:
        raw = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"corrupted {cfg_path}: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{cfg_path} must hold a mapping")
    kind = raw.get("model_kind", "transcoder_set")
    if kind != "transcoder_set":
        raise ValueError(f"{cfg_path}: model_kind {kind!r} is not supported (only per-layer 'transcoder_set')")
    for key in ("feature_input_hook", "feature_output_hook", "transcoders"):
        if key not in raw:
            raise ValueError(f"{cfg_path}: missing key {key!r}")
    if not isinstance(raw["transcoders"], list) or not raw["transcoders"]:
        raise ValueError(f"{cfg_path}: 'transcoders' must be a non-empty list of layer files")
    return raw


def _layer_file(root: Path, entry: str, source: str) -> Path:
    entry = str(entry)
    if entry.startswith("hf://"):
        # hf://owner/repo[@revision]/path: the path inside the repository (a snapshot of it
        # downloaded here, e.g. GemmaScope's layer_L/width_16k/.../params.npz), else the file name
        rel = entry[len("hf://"):].split("?", 1)[0].split("/", 2)[-1]
        for cand in (rel, rel.rsplit("/", 1)[-1]):
            local = safe_join(root, cand, source)
            if local.is_file():
                return local
        raise ValueError(
            f"{source}: layer file {entry!r} is on the hub; download the repository with "
            f"tc_circuits.formats.hub.load_from_hub first"
        )
    # only files inside the transcoder folder are ever read: the entry itself (relative, or an
    # absolute path into the folder as our exporter writes it), else its file name beside
    # config.yaml (a moved folder); a path out of the folder (``..``, elsewhere) is refused
    p = Path(entry)
    root_r = root.resolve()
    first = p if p.is_absolute() else root / p
    for cand in (first, root / p.name):
        r = cand.resolve()
        if (r == root_r or root_r in r.parents) and r.is_file():
            return cand
    r = first.resolve()
    if r != root_r and root_r not in r.parents:
        raise ValueError(
            f"{source}: layer file {entry!r} points outside {root} (resolves to {r}); only files inside "
            f"the transcoder folder are read, and there is no {p.name!r} there"
        )
    raise FileNotFoundError(f"{source}: layer file {entry!r} missing (looked beside {source} too)")


def _f64(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """``tensors`` in float64, where the folds are computed (a no-op on float64 input)."""
    return {key: v.double() for key, v in tensors.items()}


def _read_layer(file: Path) -> dict[str, Tensor]:
    if file.suffix == ".npz":  # GemmaScope's params.npz (circuit-tracer's "gemma-scope" loader)
        return _from_gemmascope(file)
    try:
        t = load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"corrupted or truncated safetensors file {file}: {err}") from err
    if "w_enc" in t:  # GemmaScope 2's params.safetensors (its "gemma-scope-2" loader)
        return _from_gemmascope(file)
    require(str(file), t, "W_enc", "W_dec", "b_enc", "b_dec")
    finite_or_raise(str(file), t)
    return t


def _from_gemmascope(file: Path) -> dict[str, Tensor]:
    """A GemmaScope parameter file in circuit-tracer's orientation (``W_enc [n, d]``, ...)."""
    from tc_circuits.formats.gemmascope import read_params

    g = read_params(file)
    t = {"W_enc": g["W_enc"].T, "W_dec": g["W_dec"], "b_enc": g["b_enc"], "b_dec": g["b_dec"],
         "activation_function.threshold": g["threshold"]}
    if "W_skip" in g:
        t["W_skip"] = g["W_skip"].T
    return t


def load_layer(
    file: str | os.PathLike,
    layer: int,
    *,
    input_hook: str = "mlp.hook_in",
    output_hook: str = "mlp.hook_out",
    activation: str | None = None,
    k: int | None = None,
    model_name: str | None = None,
    model_d_model: int | None = None,
    processing: dict[str, bool] | None = None,
    hf_model: Any = None,
    output_centered: bool = False,
    keep_processing: bool = False,
    model: Any = None,
    family: str | None = None,
) -> Transcoder:
    """One circuit-tracer ``layer_{i}.safetensors`` file as a :class:`Transcoder`.

    ``processing`` is the target model's (default: ``from_pretrained``'s; recorded as given
    when ``keep_processing``); see the module docstring for what is folded.
    ``output_centered``: the decoder is already centred (our own export).
    ``model``: the processed target model (checked; its processing is reconciled and recorded,
    see :mod:`tc_circuits.formats.retarget`). ``family``: the source model's family (from the
    config's ``model_name``); ``mlp.hook_out`` on a post-MLP-norm family (Gemma) is refused.
    """
    source = str(file)
    t = _read_layer(Path(file))
    n, d_in = t["W_enc"].shape
    d_out = t["b_dec"].shape[0]
    check_shape(source, "b_enc", t["b_enc"], (n,))
    check_shape(source, "W_dec", t["W_dec"], (n, d_out))
    dtype = t["W_enc"].dtype
    # in the file's dtype; the folds below run in float64 (`_f64`) only when one applies, since the
    # float64 round trip of 1.8 GB of dictionaries took 4.3 of a 10 s load with nothing to fold
    tensors: dict[str, Tensor] = {"W_enc": t["W_enc"].T, "b_enc": t["b_enc"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    skip = "W_skip" in t
    if skip:
        check_shape(source, "W_skip", t["W_skip"], (d_out, d_in))
        tensors["W_skip"] = t["W_skip"].T
    thr_key = next((key for key in _THRESHOLD_KEYS if key in t), None)
    act = {None: "relu", "relu": "relu", "topk": "topk", "jump_relu": "jumprelu",
           "jumprelu": "jumprelu"}.get(activation, "?")
    if act == "?":
        raise ValueError(f"{source}: unsupported activation {activation!r}")
    log_threshold = None
    if act != "topk" and (thr_key is not None or "log_thresholds" in t):
        act = "jumprelu"
        if thr_key is not None:
            check_shape(source, thr_key, t[thr_key], (n,))
            log_threshold = threshold_to_log(source, t[thr_key])
        else:
            check_shape(source, "log_thresholds", t["log_thresholds"], (n,))
            log_threshold = t["log_thresholds"]
    elif act == "jumprelu":
        raise ValueError(f"{source}: activation is JumpReLU but the file holds no threshold")
    if act == "topk" and k is None:
        raise ValueError(f"{source}: activation is topk but config.yaml gives no k")
    proc = dict(processing or {}) if keep_processing else processing_from(processing)
    in_site, out_site = _site(input_hook, layer, source), _site(output_hook, layer, source)
    h_in, h_out = tl_hook(input_hook, layer, fold_ln=False), tl_hook(output_hook, layer)
    output_site(source, h_out, family, model)  # refuses Gemma's pre-post-norm mlp.hook_out
    if model is not None:
        check_width(source, "d_model (W_enc columns)", d_in, model)
        # circuit-tracer's models are unprocessed; our export may have centred the decoder
        src = {"fold_ln": False, "center_writing_weights": bool(output_centered), "center_unembed": False}
        tensors, in_site, out_site, proc = retarget(
            _f64(tensors), source=source, in_hook=h_in, out_hook=h_out, family=family, hf_model=hf_model,
            model=model, processing=src)
    else:
        if h_in.norm_output:
            tensors = fold_norm(_f64(tensors), hf_model, layer, d_in, source=source, hook=input_hook)
        if output_hook in ("mlp.hook_out", "hook_mlp_out") and proc.get("center_writing_weights") \
                and not output_centered:
            tensors = center_output(_f64(tensors))
    tensors = {key: v.to(dtype) for key, v in tensors.items()}  # `build` copies them into place
    if log_threshold is not None:
        tensors["log_threshold"] = log_threshold
    cfg = make_config(
        d_in=d_in, d_out=d_out, n_latents=n,
        input_site=in_site.hook_name, output_site=out_site.hook_name,
        activation=act, k=k, skip=skip,
        model_name=model_name, model_d_model=model_d_model, weight_processing=proc,
        extra={"source_format": "circuit-tracer"},
    )
    return build(cfg, tensors, source=source)


def load_circuit_tracer(
    path: str | os.PathLike,
    *,
    processing: dict[str, bool] | None = None,
    hf_model: Any = None,
    model_name: str | None = None,
    model: Any = None,
) -> TranscoderSet:
    """A circuit-tracer transcoder-set folder (``config.yaml`` + layer files) as a TranscoderSet.

    Layer files are circuit-tracer's ``layer_{i}.safetensors``, GemmaScope's ``params.npz``
    (as its ``gemma-scope`` loader reads them) or GemmaScope 2's ``params.safetensors``;
    ``hf://owner/repo/path`` entries are found at ``path`` inside the folder (a downloaded
    snapshot of the repository). ``model``: the processed target model; the config's
    ``model_name`` (and ``hf_model``'s) family and the widths are checked against it, its
    processing reconciled and its name and flags recorded.

    Args:
        path: the folder holding ``config.yaml``.
        processing: TransformerLens processing of the model the transcoders will run on
            (default: what our export recorded, else ``from_pretrained``'s).
        hf_model: the unprocessed model (HF, or a ``HookedTransformer`` with ``fold_ln=False``)
            or its state dict: its MLP-input LayerNorm gain/bias fold into the encoder when the
            set reads ``mlp.hook_in``.
        model_name: overrides the config's ``model_name``.
    """
    root = Path(path)
    raw = read_config(root)
    ours = raw.get("tc_circuits") or {}
    keep = processing is None and "weight_processing" in ours
    if keep:
        processing = ours["weight_processing"]
    source = str(root / CONFIG_FILE)
    family = family_of_name(raw.get("model_name"))
    check_family(source, "model_name", raw.get("model_name"), family, model)
    if hf_model is not None:
        hf_model = WeightSource(hf_model, name=f"{source}: hf_model")
        check_family(source, "hf_model", hf_model.name, hf_model.family, model)
        family = family or hf_model.family
    if model is not None:
        from tc_circuits.models.model_info import model_signature

        sig = model_signature(model)
        model_name, ours = model_name or sig["model_name"], {**ours, "model_d_model": sig["d_model"]}
    out = TranscoderSet()
    for layer, entry in enumerate(raw["transcoders"]):
        file = _layer_file(root, entry, str(root / CONFIG_FILE))
        match = re.search(r"layer_?(\d+)", Path(str(entry)).name)
        if match and int(match.group(1)) != layer:
            raise ValueError(f"{root / CONFIG_FILE}: entry {layer} is {entry!r}, which names another layer")
        out[layer] = load_layer(
            file, layer,
            input_hook=raw["feature_input_hook"], output_hook=raw["feature_output_hook"],
            activation=raw.get("activation"), k=raw.get("k"),
            model_name=model_name or ours.get("model_name") or tl_model_name(raw.get("model_name")),
            model_d_model=ours.get("model_d_model"), processing=processing, hf_model=hf_model,
            output_centered=bool(ours.get("output_centered", False)), keep_processing=keep,
            model=model, family=family,
        )
    return out


def installed_reads_topk() -> bool | None:
    """Whether the installed circuit-tracer reads ``activation: topk`` (``None``: not installed).

    Feature-detected (``load_transcoder_set`` takes ``activation``/``k``): version numbers do
    not tell, the PyPI 0.5.0 wheel predates the TopK support that upstream ``main`` has.
    """
    import importlib.util
    import inspect

    if importlib.util.find_spec("circuit_tracer") is None:
        return None
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    return "activation" in inspect.signature(load_transcoder_set).parameters


def save_circuit_tracer(
    transcoders: TranscoderSet | dict[int, Transcoder],
    path: str | os.PathLike,
    *,
    model_name: str | None = None,
    scan: str | None = None,
    hf_model: Any = None,
    allow_topk: bool | None = None,
    model: Any = None,
) -> Path:
    """Write ``transcoders`` as a circuit-tracer transcoder set (layers 0..L-1, one per layer).

    The MLP output is written as circuit-tracer's ``mlp.hook_out``, except for a family with a
    post-MLP norm (Gemma: told by ``hf_model``'s or ``model``'s family, or the model name),
    where that hook is before the norm and ``hook_mlp_out`` (after it, as ours) is written.

    Args:
        transcoders: one transcoder per layer, all reading the same relative site.
        path: output folder (``config.yaml`` + ``layer_{i}.safetensors``).
        model_name: circuit-tracer's ``model_name`` (default: the transcoders').
        scan: circuit-tracer's / Neuronpedia's id of the set (default: from the model name).
        hf_model: the unprocessed model or its state dict; given, MLP-input transcoders are
            unfolded to read circuit-tracer's ``mlp.hook_in`` (else they read
            ``ln2.hook_normalized``, the same activation, exactly).
        allow_topk: write TopK sets (``activation: topk`` + ``k``). Default: only when the
            installed circuit-tracer reads them; releases without TopK support (PyPI 0.5.0)
            would silently read ReLU, so without one installed TopK is refused unless ``True``.
        model: the (processed) model the transcoders are for; only its family is read.
    """
    layers = sorted(transcoders)
    if not layers or layers != list(range(len(layers))):
        raise ValueError(f"circuit-tracer needs one transcoder for every layer 0..L-1, got layers {layers}")
    first = transcoders[layers[0]].cfg
    activations = {transcoders[layer].cfg.activation for layer in layers}
    ks = {transcoders[layer].cfg.k for layer in layers}
    if len(activations) != 1 or (activations == {"topk"} and len(ks) != 1):
        raise ValueError(f"circuit-tracer sets share one activation; got {activations} with k in {ks}")
    activation = activations.pop()
    if activation == "topk" and not allow_topk:
        reads = installed_reads_topk()
        if allow_topk is False or not reads:
            why = {None: "no circuit-tracer is installed to check", False: "the installed circuit-tracer "
                   "has no TopK support"}.get(reads, "allow_topk=False")
            raise ValueError(
                f"refusing to write TopK transcoders for circuit-tracer ({why}): releases without "
                f"'activation: topk' support (the PyPI 0.5.0 wheel) read them as ReLU, silently wrong. "
                f"Upstream circuit-tracer main (PR #94) reads them; pass allow_topk=True "
                f"(tc-circuits convert --allow-topk) to write them for it"
            )
    unfold = hf_model is not None and first.in_site.kind == "mlp_in"
    in_rel = "mlp.hook_in" if unfold else _relative(first.in_site)
    # circuit-tracer's mlp.hook_out is the MLP's own output: on a post-MLP-norm family (Gemma)
    # that is before the norm, so those sets name hook_mlp_out (after it, as ours)
    post_norm = any(has_post_mlp_norm(fam) for fam in (
        WeightSource(hf_model).family if hf_model is not None else None,
        module_family(model) if model is not None else None,
        family_of_name(first.model_name)))
    out_rel = ("hook_mlp_out" if post_norm else "mlp.hook_out") if first.out_site.kind == "mlp_out" \
        else _relative(first.out_site)
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for layer in layers:
        tc = transcoders[layer]
        c = tc.cfg
        if c.layer != layer or c.in_site.layer != layer or (c.in_site.kind, c.out_site.kind) != (
            first.in_site.kind, first.out_site.kind
        ):
            raise ValueError(f"layer {layer}: sites {c.input_site} -> {c.output_site} differ from layer 0's pattern")
        if c.d_in != c.d_out:
            raise ValueError(f"layer {layer}: circuit-tracer transcoders map d_model -> d_model; got {c.d_in} -> {c.d_out}")
        t = {name: p.detach() for name, p in tc.named_parameters() if name != "log_threshold"}
        if unfold:
            w, b = ln2_gain_bias(hf_model, layer)
            dtype = t["W_enc"].dtype
            t = unfold_input_affine({key: v.double() for key, v in t.items()}, w, b, source=f"layer {layer}")
            t = {key: v.to(dtype) for key, v in t.items()}
        tensors = {
            "W_enc": t["W_enc"].T.contiguous(), "W_dec": t["W_dec"].contiguous(),
            "b_enc": t["b_enc"].contiguous(), "b_dec": t["b_dec"].contiguous(),
        }
        if "W_skip" in t:
            tensors["W_skip"] = t["W_skip"].T.contiguous()
        if tc.log_threshold is not None:
            tensors["activation_function.threshold"] = tc.log_threshold.detach().exp().contiguous()
        name = f"layer_{layer}.safetensors"
        atomic_write(root / name, lambda p, t=tensors: save_file(t, p))
        files.append(str((root / name).resolve()))
    name = model_name or first.model_name or "model"
    cfg: dict[str, Any] = {
        "model_name": name,
        "model_kind": "transcoder_set",
        "scan": scan or default_scan(name),
        "feature_input_hook": in_rel,
        "feature_output_hook": out_rel,
    }
    if activation in ("relu", "topk"):
        cfg["activation"] = activation
    if activation == "topk":
        cfg["k"] = int(ks.pop())
    cfg["transcoders"] = files
    cfg["tc_circuits"] = {
        "model_name": first.model_name,
        "model_d_model": first.model_d_model,
        "weight_processing": {k: bool(v) for k, v in first.weight_processing.items()},
        "output_centered": bool(first.weight_processing.get("center_writing_weights", False)),
        "input_unfolded": unfold,
    }
    text = yaml.safe_dump(cfg, sort_keys=False)
    atomic_write(root / CONFIG_FILE, lambda p: Path(p).write_text(text))
    return root


def default_scan(model_name: str) -> str:
    """A ``scan`` id without ``/`` (Neuronpedia and circuit-tracer use it in URLs and file names)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{model_name}-transcoders").strip("-")


__all__ = ["default_scan", "installed_reads_topk", "load_circuit_tracer", "load_layer",
           "read_config", "save_circuit_tracer"]
