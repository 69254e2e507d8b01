"""Foreign transcoders on every family's hook points, against each format's own forward.

For Pythia (parallel LayerNorm block), Llama-3 (RMSNorm) and Gemma-2/3 (RMSNorm ``1 + w``,
post-MLP norm) tiny random models (``tests/families.py``), random checkpoints are written in
each source layout (sparsify hookpoints on HF modules, GemmaScope ``params.npz`` and GemmaScope-2
``params.safetensors``, circuit-tracer ``config.yaml`` sets, SAELens cfgs) and imported onto our
processed model. The reference is the source format's forward written out by hand, on the
activation that format reads:

* float32, against the **Hugging Face model** (forward hooks on the MLP module and the norms
  around it): latents and outputs agree to ~1e-5 and our output site is the format's;
* float64, the format's input computed by hand from the TransformerLens residual stream and
  the HF norm weights: latents and outputs agree to 1e-9, and a graph built with the imported
  transcoders passes the engine's exactness check and the intervention check.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from attribution_helpers import check_edges_by_intervention
from families import FAMILY_NAMES, VOCAB, build_folder, family
from safetensors.torch import load_file, save_file

from tc_circuits.attribution import attribute, logit_target
from tc_circuits.formats import load_circuit_tracer, load_saelens, load_sparsify, save_sparsify
from tc_circuits.formats.gemmascope import load_gemmascope
from tc_circuits.models.loading import load_model

pytestmark = pytest.mark.filterwarnings("ignore:target .*has probability")

FAMS = ("pythia", "llama3", "gemma2", "gemma3")
LAYERNORM = ("pythia", "gptj")  # parallel LayerNorm blocks, centred by TransformerLens
#: every family without a post-MLP norm: sparsify's MLP hookpoint maps onto our sites
SPARSIFY_FAMS = [n for n in FAMILY_NAMES if not n.startswith("gemma")]
L = 1
P = 10
N = 48
TOL32 = 1e-5  # float32: HF vs TransformerLens forward differ at this level


@pytest.fixture(scope="module")
def fams(tmp_path_factory):
    root = tmp_path_factory.mktemp("fam_import")

    class Lazy(dict):  # each family is built and loaded the first time a test asks for it
        def __missing__(self, name):
            hf, folder = build_folder(family(name), root)
            self[name] = SimpleNamespace(name=name, hf=hf, folder=folder, sd=hf.state_dict(),
                                         m32=load_model(folder), m64=load_model(folder, dtype="float64"))
            return self[name]

    return Lazy()


#: family -> (HF layer list, MLP-input norm module, its tensor prefix) of layer L
def _hf_layout(name):
    if name == "pythia":
        return "gpt_neox.layers", "post_attention_layernorm"
    if name == "gptj":  # parallel, one shared LayerNorm
        return "transformer.h", "ln_1"
    if name.startswith("gemma"):
        return "model.layers", "pre_feedforward_layernorm"
    return "model.layers", "post_attention_layernorm"


def _tokens(seed=3):
    return torch.randint(0, VOCAB, (P,), generator=torch.Generator().manual_seed(seed))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _r(gen, *shape, scale=1.0):
    return scale * torch.randn(*shape, generator=gen, dtype=torch.float64)


# ----------------------------------------------------------------------------- activations
def hf_sites(f, toks):
    """HF float32: the MLP module's input / output, the pre-MLP norm's input, the post-MLP norm's output."""
    layers, norm_name = _hf_layout(f.name)
    layer = f.hf.get_submodule(layers)[L]
    gemma = f.name.startswith("gemma")
    norm = getattr(layer, norm_name)
    cache = {}
    hooks = [
        layer.mlp.register_forward_hook(lambda m, i, o: cache.update(mlp_in=i[0][0], mlp_out=o[0])),
        norm.register_forward_hook(lambda m, i, o: cache.update(norm_in=i[0][0])),
    ]
    if gemma:
        hooks.append(layer.post_feedforward_layernorm.register_forward_hook(
            lambda m, i, o: cache.update(post_out=o[0])))
    try:
        with torch.no_grad():
            f.hf(toks[None])
    finally:
        for h in hooks:
            h.remove()
    return {k: v.detach().double() for k, v in cache.items()}


def tl_sites(model, toks):
    names = [f"blocks.{L}.ln2.hook_normalized", f"blocks.{L}.hook_mlp_out", f"blocks.{L}.hook_resid_pre",
             f"blocks.{L}.hook_resid_mid"]
    with torch.no_grad():
        _, cache = model.run_with_cache(toks[None], names_filter=lambda n: n in names)
    return {n.split(".", 2)[-1]: cache[n][0] for n in names if n in cache.cache_dict}  # parallel: no resid_mid


def norm_affine(f):
    """(gain, bias) of layer L's MLP-input norm, from the HF weights, in float64."""
    sd = f.sd
    layers, norm_name = _hf_layout(f.name)
    key = f"{layers}.{L}.{norm_name}"
    if f.name.startswith("gemma"):
        # HF's Gemma RMSNorm: output * (1.0 + weight.float()), the gain in float32
        return (1.0 + sd[key + ".weight"].float()).double(), None
    return sd[key + ".weight"].double(), (sd[key + ".bias"].double() if key + ".bias" in sd else None)


def normalised(f, r):
    """The norm's ``n(x)`` by hand (LayerNorm for Pythia, RMSNorm otherwise)."""
    eps = f.m64.cfg.eps
    if f.name in LAYERNORM:
        r = r - r.mean(-1, keepdim=True)
    return r / torch.sqrt(r.pow(2).mean(-1, keepdim=True) + eps)


def source_input_64(f, toks, with_gain=True):
    """The format's input by hand in float64, from TL's residual (Pythia's MLP reads the block input)."""
    tl = tl_sites(f.m64, toks)
    r = tl["hook_resid_pre"] if f.name in LAYERNORM else tl["hook_resid_mid"]  # both parallel
    n = normalised(f, r.double())
    if not with_gain:
        return n
    g, b = norm_affine(f)
    return n * g + (0 if b is None else b)


def to_tl_output(f, y):
    """The format's (HF) MLP output as TL's hook_mlp_out: centred for the LayerNorm (Pythia) model."""
    return y - y.mean(-1, keepdim=True) if f.name in LAYERNORM else y


# ----------------------------------------------------------------------------- reference forwards
def topk_ref(x, t, k):
    """sparsify: relu(x W^T + b), top-k, then acts W_dec + b_dec + x W_skip^T."""
    pre = torch.relu(x @ t["encoder.weight"].double().T + t["encoder.bias"].double())
    vals, idx = pre.topk(k, dim=-1)
    lat = torch.zeros_like(pre).scatter(-1, idx, vals)
    out = lat @ t["W_dec"].double() + t["b_dec"].double()
    if "W_skip" in t:
        out = out + x @ t["W_skip"].double().T
    return lat, out


def jumprelu_ref(x, W_enc, b_enc, thr, W_dec, b_dec, skip=None):
    """GemmaScope / SAELens / circuit-tracer JumpReLU: z * (z > threshold), z = x W_enc + b_enc."""
    z = x @ W_enc.double() + b_enc.double()
    lat = z * (z > thr.double())
    out = lat @ W_dec.double() + b_dec.double()
    return lat, out if skip is None else out + x @ skip.double()


# ----------------------------------------------------------------------------- writers
def write_sparsify(root, f, dtype, hookpoint, seed=0, k=6):
    g, d = _gen(seed), f.m32.cfg.d_model
    t = {"encoder.weight": _r(g, N, d, scale=d ** -0.5), "encoder.bias": _r(g, N, scale=0.1),
         "W_dec": _r(g, N, d, scale=0.3), "b_dec": _r(g, d, scale=0.1), "W_skip": _r(g, d, d, scale=0.1)}
    t = {key: v.to(dtype).contiguous() for key, v in t.items()}
    folder = root / hookpoint
    folder.mkdir(parents=True)
    save_file(t, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"activation": "topk", "d_in": d, "num_latents": N, "k": k,
                                                 "transcode": True, "skip_connection": True}))
    return folder, t


def jump_tensors(d, seed, dtype, skip=False):
    g = _gen(seed)
    t = {"W_enc": _r(g, d, N, scale=d ** -0.5), "W_dec": _r(g, N, d, scale=0.3), "b_enc": _r(g, N, scale=0.1),
         "b_dec": _r(g, d, scale=0.1), "threshold": 0.4 + 0.4 * torch.rand(N, generator=g, dtype=torch.float64)}
    if skip:
        t["W_skip"] = _r(g, d, d, scale=0.1)
    return {key: v.to(dtype).contiguous() for key, v in t.items()}


def write_gemmascope(root, layer, t):
    """GemmaScope (Gemma-2) layout: layer_L/width_16k/average_l0_N/params.npz."""
    folder = root / f"layer_{layer}" / "width_16k" / "average_l0_7"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in t.items()})
    return folder


def write_gemmascope2(root, layer, t, *, hook_in=None, hook_out=None, model_name="gemma-v3-1b-pt"):
    """GemmaScope 2 (Gemma-3) layout: params.safetensors (lower-case keys) + config.json."""
    folder = root / "transcoder" / f"layer_{layer}_width_16k_l0_small"
    folder.mkdir(parents=True)
    names = {"W_enc": "w_enc", "W_dec": "w_dec", "W_skip": "affine_skip_connection"}
    save_file({names.get(k, k): v for k, v in t.items()}, str(folder / "params.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "jump_relu", "model_name": model_name,
        "hf_hook_point_in": hook_in or f"model.layers.{layer}.pre_feedforward_layernorm.output",
        "hf_hook_point_out": hook_out or f"model.layers.{layer}.post_feedforward_layernorm.output",
        "affine_connection": "W_skip" in t}))
    return folder


def _check(ours, ref_lat, ref_out, f, *, tol):
    torch.testing.assert_close(ours.latents.double(), ref_lat, atol=tol, rtol=tol)
    torch.testing.assert_close(ours.output.double(), to_tl_output(f, ref_out), atol=tol, rtol=tol)
    assert int((ref_lat != 0).sum()) > P  # the check saw active latents


# ----------------------------------------------------------------------------- sites themselves
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_our_sites_are_the_formats_sites(fams, name):
    """TL's ln2.hook_normalized * gain (+ bias) is HF's MLP input; TL's hook_mlp_out is HF's MLP
    output (Pythia: centred) or, on Gemma, the post_feedforward_layernorm output."""
    f, toks = fams[name], _tokens()
    hf, tl = hf_sites(f, toks), tl_sites(f.m32, toks)
    g, b = norm_affine(f)
    x = tl["ln2.hook_normalized"].double() * g + (0 if b is None else b)
    torch.testing.assert_close(x, hf["mlp_in"], atol=2e-5, rtol=2e-5)
    y = hf["post_out"] if name.startswith("gemma") else to_tl_output(f, hf["mlp_out"])
    torch.testing.assert_close(tl["hook_mlp_out"].double(), y, atol=2e-5, rtol=2e-5)


# ----------------------------------------------------------------------------- sparsify
@pytest.mark.parametrize("name", SPARSIFY_FAMS)
def test_sparsify_on_hf_mlp_module(fams, name, tmp_path):
    f, toks = fams[name], _tokens()
    hookpoint = f"h.{L}.mlp" if name == "gptj" else f"layers.{L}.mlp"
    # float32 against the HF model's own MLP input
    folder, t = write_sparsify(tmp_path / "f32", f, torch.float32, hookpoint)
    tc = load_sparsify(folder, hf_model=f.folder, model=f.m32)
    tc.check_compatible(f.m32)
    assert (tc.cfg.input_site, tc.cfg.output_site) == (f"blocks.{L}.ln2.hook_normalized", f"blocks.{L}.hook_mlp_out")
    ours = tc(tl_sites(f.m32, toks)["ln2.hook_normalized"])
    _check(ours, *topk_ref(hf_sites(f, toks)["mlp_in"], t, 6), f, tol=TOL32)
    # float64, exact
    folder, t = write_sparsify(tmp_path / "f64", f, torch.float64, hookpoint)
    tc = load_sparsify(folder, hf_model=f.sd, model=f.m64)
    ours = tc(tl_sites(f.m64, toks)["ln2.hook_normalized"])
    _check(ours, *topk_ref(source_input_64(f, toks), t, 6), f, tol=1e-9)
    # export is the inverse: same hookpoint name, same tensors back
    out = save_sparsify(tc, tmp_path / "export", hf_model=f.folder)
    back = load_sparsify(out / hookpoint, hf_model=f.folder, model=f.m64)
    for key, v in tc.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], v, atol=1e-12, rtol=1e-12)
    from tc_circuits.formats import load_any

    many = load_any(out, hf_model=f.folder, model=f.m64)  # the export folder, as a set
    assert sorted(many) == [L] and torch.equal(many[L].W_enc, back.W_enc)
    exported = load_file(str(out / hookpoint / "sae.safetensors"))
    for key in ("encoder.weight", "encoder.bias"):
        torch.testing.assert_close(exported[key], t[key], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
def test_sparsify_gemma_mlp_output_is_refused(fams, tmp_path, name):
    f = fams[name]
    folder, _ = write_sparsify(tmp_path, f, torch.float32, f"layers.{L}.mlp")
    with pytest.raises(ValueError, match="post_feedforward_layernorm.*hook_mlp_out|before Gemma's post-MLP norm"):
        load_sparsify(folder, hf_model=f.folder, model=f.m32)
    with pytest.raises(ValueError, match="before Gemma's post-MLP norm"):
        load_sparsify(folder, hf_model=f.folder)  # the family comes from the weights alone
    # and the other way: our post-norm transcoder is not written to sparsify's pre-norm site
    ours = load_gemmascope(write_gemmascope2(tmp_path / "gs", L, jump_tensors(f.m32.cfg.d_model, 1, torch.float32),
                                             model_name=f"{name}-x"), hf_model=f.folder, model=f.m32)
    topk = type(ours)(ours.cfg.replace(activation="topk", k=4))
    with pytest.raises(ValueError, match=r"layers.1.mlp transcoders predict the MLP output before Gemma's "
                                         r"post_feedforward_layernorm.*blocks.1.hook_mlp_out"):
        save_sparsify(topk, tmp_path / "out", hf_model=f.folder)


# ----------------------------------------------------------------------------- GemmaScope
@pytest.mark.parametrize("dtype,tol", [(torch.float32, TOL32), (torch.float64, 1e-9)])
def test_gemmascope_npz_on_gemma2(fams, tmp_path, dtype, tol):
    """GemmaScope (Gemma-2) reads ln2.hook_normalized -> hook_mlp_out: no gain, mapped one to one."""
    f, toks = fams["gemma2"], _tokens()
    t = jump_tensors(f.m32.cfg.d_model, 1, dtype)
    tc = load_gemmascope(write_gemmascope(tmp_path, L, t), model=f.m32 if dtype == torch.float32 else f.m64)
    assert tc.cfg.extra["gain_folded"] is False and tc.cfg.layer == L
    if dtype == torch.float32:
        x_ref = normalised(f, hf_sites(f, toks)["norm_in"])  # HF's pre_feedforward_layernorm, before its gain
        ours = tc(tl_sites(f.m32, toks)["ln2.hook_normalized"])
    else:
        x_ref = source_input_64(f, toks, with_gain=False)
        ours = tc(tl_sites(f.m64, toks)["ln2.hook_normalized"])
    _check(ours, *jumprelu_ref(x_ref, t["W_enc"], t["b_enc"], t["threshold"], t["W_dec"], t["b_dec"]), f, tol=tol)
    if dtype == torch.float64:  # a file known to read the norm output instead: say so, the gain folds
        tc = load_gemmascope(write_gemmascope(tmp_path / "gain", L, t), input_hook="mlp.hook_in",
                             hf_model=f.folder, model=f.m64)
        ours = tc(tl_sites(f.m64, toks)["ln2.hook_normalized"])
        _check(ours, *jumprelu_ref(source_input_64(f, toks), t["W_enc"], t["b_enc"], t["threshold"], t["W_dec"],
                                   t["b_dec"]), f, tol=tol)


@pytest.mark.parametrize("name", ["gemma3", "gemma2"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, TOL32), (torch.float64, 1e-9)])
def test_gemmascope2_folds_the_pre_mlp_gain(fams, tmp_path, name, dtype, tol):
    """GemmaScope 2 reads pre_feedforward_layernorm.output (with its 1 + w gain): folded into W_enc and
    the affine skip; output post_feedforward_layernorm.output = our hook_mlp_out."""
    f, toks = fams[name], _tokens()
    t = jump_tensors(f.m32.cfg.d_model, 2, dtype, skip=True)
    folder = write_gemmascope2(tmp_path, L, t, model_name="gemma-v3-1b-pt" if name == "gemma3" else "gemma-2-2b")
    model = f.m32 if dtype == torch.float32 else f.m64
    tc = load_gemmascope(folder, hf_model=f.folder, model=model)
    assert tc.cfg.extra["gain_folded"] is True and tc.cfg.skip
    tc.check_compatible(model)
    x_ref = hf_sites(f, toks)["mlp_in"] if dtype == torch.float32 else source_input_64(f, toks)
    ours = tc(tl_sites(model, toks)["ln2.hook_normalized"])
    _check(ours, *jumprelu_ref(x_ref, t["W_enc"], t["b_enc"], t["threshold"], t["W_dec"], t["b_dec"], t["W_skip"]),
           f, tol=tol)


# ----------------------------------------------------------------------------- circuit-tracer
def write_ct_set(root, f, dtype, *, in_hook, out_hook, gemmascope_npz=False, model_name=None):
    d = f.m32.cfg.d_model
    entries, tensors = [], {}
    for layer in range(f.m32.cfg.n_layers):
        t = jump_tensors(d, 10 + layer, dtype, skip=not gemmascope_npz)
        tensors[layer] = t
        if gemmascope_npz:  # hf:// entries into a downloaded snapshot of the GemmaScope repo
            folder = write_gemmascope(root / "gemma-scope-2b-pt-transcoders", layer, t)
            rel = folder.relative_to(root / "gemma-scope-2b-pt-transcoders")
            write_gemmascope(root, layer, t)
            entries.append(f"hf://google/gemma-scope-2b-pt-transcoders/{rel}/params.npz")
        else:
            ct = {"W_enc": t["W_enc"].T.contiguous(), "W_dec": t["W_dec"], "b_enc": t["b_enc"], "b_dec": t["b_dec"],
                  "activation_function.threshold": t["threshold"], "W_skip": t["W_skip"].T.contiguous()}
            save_file(ct, str(root / f"layer_{layer}.safetensors"))
            entries.append(f"layer_{layer}.safetensors")
    cfg = {"model_name": model_name or f.name, "model_kind": "transcoder_set", "scan": "test",
           "feature_input_hook": in_hook, "feature_output_hook": out_hook, "transcoders": entries}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return tensors


@pytest.mark.parametrize("name,in_hook,out_hook", [
    ("gemma2", "ln2.hook_normalized", "hook_mlp_out"),  # mntss/mwhanna GemmaScope config
    ("gemma2", "mlp.hook_in", "hook_mlp_out"),
    ("llama3", "mlp.hook_in", "mlp.hook_out"),
    ("pythia", "mlp.hook_in", "mlp.hook_out"),
])
def test_circuit_tracer_sets_per_family_and_graph_is_exact(fams, tmp_path, name, in_hook, out_hook):
    f, toks = fams[name], _tokens()
    npz = in_hook == "ln2.hook_normalized"
    tensors = write_ct_set(tmp_path, f, torch.float64, in_hook=in_hook, out_hook=out_hook, gemmascope_npz=npz,
                           model_name="google/gemma-2-2b" if npz else None)
    tcs = load_circuit_tracer(tmp_path, hf_model=f.folder, model=f.m64)
    t = tensors[L]
    ours = tcs[L](tl_sites(f.m64, toks)["ln2.hook_normalized"])
    x_ref = source_input_64(f, toks, with_gain=not npz)
    _check(ours, *jumprelu_ref(x_ref, t["W_enc"], t["b_enc"], t["threshold"], t["W_dec"], t["b_dec"], t.get("W_skip")),
           f, tol=1e-9)
    for tc in tcs.values():
        tc.check_compatible(f.m64)
    if in_hook == "mlp.hook_in":  # export is the inverse (Gemma: written as hook_mlp_out, after the post-norm)
        from tc_circuits.formats import save_circuit_tracer

        out = save_circuit_tracer(tcs, tmp_path / "export", hf_model=f.folder)
        written = yaml.safe_load((out / "config.yaml").read_text())
        assert (written["feature_input_hook"], written["feature_output_hook"]) == (in_hook, out_hook)
        back = load_circuit_tracer(out, hf_model=f.folder, model=f.m64)
        for key, v in tcs[L].state_dict().items():
            torch.testing.assert_close(back[L].state_dict()[key], v, atol=1e-12, rtol=1e-12)
        renamed = {k: type(tc)(tc.cfg.replace(model_name="my-model")) for k, tc in tcs.items()}
        out = save_circuit_tracer(renamed, tmp_path / "export2", model=f.m64)  # the family from the model
        assert yaml.safe_load((out / "config.yaml").read_text())["feature_output_hook"] == out_hook
    target = logit_target(5, VOCAB)
    graph = attribute(f.m64, tcs, toks, targets=[target], progress=False, batch_size=16)
    assert graph.metadata["exactness_max_abs_dev"] < 1e-9
    check_edges_by_intervention(graph, f.m64, tcs, toks, [target], n_features=8)


def test_circuit_tracer_gemma_pre_norm_output_is_refused(fams, tmp_path):
    f = fams["gemma2"]
    write_ct_set(tmp_path, f, torch.float32, in_hook="mlp.hook_in", out_hook="mlp.hook_out")
    with pytest.raises(ValueError, match=r"'mlp.hook_out'.*before Gemma's post-MLP norm.*blocks.0.hook_mlp_out"):
        load_circuit_tracer(tmp_path, hf_model=f.folder, model=f.m32)
    with pytest.raises(ValueError, match="before Gemma's post-MLP norm"):  # family from the weights
        load_circuit_tracer(tmp_path, hf_model=f.sd)


# ----------------------------------------------------------------------------- SAELens
def write_saelens(root, t, cfg):
    root.mkdir(parents=True)
    save_file(t, str(root / "sae_weights.safetensors"))
    (root / "cfg.json").write_text(json.dumps(cfg))
    return root


def _sl_cfg(d, **kw):
    return {"architecture": "jumprelu_transcoder", "d_in": d, "d_out": d, "d_sae": N,
            "apply_b_dec_to_input": False, "normalize_activations": "none", **kw}


def test_saelens_gemmascope_cfg_on_gemma2(fams, tmp_path):
    """SAELens' gemma_2_transcoder cfg (hook ln2.hook_normalized -> hook_mlp_out, model gemma-2-2b)."""
    f, toks = fams["gemma2"], _tokens()
    d = f.m32.cfg.d_model
    t = jump_tensors(d, 3, torch.float64)
    root = write_saelens(tmp_path / "gs", {k: v for k, v in t.items()}, _sl_cfg(
        d, model_name="gemma-2-2b", hook_name=f"blocks.{L}.ln2.hook_normalized", hook_name_out=f"blocks.{L}.hook_mlp_out"))
    tc = load_saelens(root, model=f.m64)
    tc.check_compatible(f.m64)
    ours = tc(tl_sites(f.m64, toks)["ln2.hook_normalized"])
    _check(ours, *jumprelu_ref(source_input_64(f, toks, with_gain=False), t["W_enc"], t["b_enc"], t["threshold"],
                               t["W_dec"], t["b_dec"]), f, tol=1e-9)


@pytest.mark.parametrize("name", ["llama3", "pythia"])
def test_saelens_unprocessed_mlp_hook_in(fams, tmp_path, name):
    """mwhanna-style cfg: blocks.L.mlp.hook_in on a model loaded with fold_ln=False (its gain and
    bias applied), hook_mlp_out uncentred: gain folded, decoder centred for the centred Pythia."""
    f, toks = fams[name], _tokens()
    d = f.m32.cfg.d_model
    t = jump_tensors(d, 4, torch.float64, skip=True)
    sl = {k: v for k, v in t.items() if k != "W_skip"}
    sl["W_skip"] = t["W_skip"].T.contiguous()  # SAELens: x @ W_skip.T
    kwargs = {"fold_ln": False, "center_writing_weights": False}
    root = write_saelens(tmp_path / "mw", sl, _sl_cfg(
        d, architecture="jumprelu_skip_transcoder", model_name=f.m32.cfg.model_name,
        hook_name=f"blocks.{L}.mlp.hook_in", hook_name_out=f"blocks.{L}.hook_mlp_out",
        model_from_pretrained_kwargs=kwargs))
    with pytest.raises(ValueError, match="mlp.hook_in.*hf_model="):
        load_saelens(root, model=f.m64)
    tc = load_saelens(root, model=f.m64, hf_model=f.folder)
    tc.check_compatible(f.m64)
    ours = tc(tl_sites(f.m64, toks)["ln2.hook_normalized"])
    _check(ours, *jumprelu_ref(source_input_64(f, toks), t["W_enc"], t["b_enc"], t["threshold"], t["W_dec"],
                               t["b_dec"], t["W_skip"]), f, tol=1e-9)


def test_saelens_gemma3_hf_hook_names(fams, tmp_path):
    """SAELens' Gemma-3 cfg: a bridge alias hook_name plus hf_hook_name (with the gain)."""
    f, toks = fams["gemma3"], _tokens()
    d = f.m32.cfg.d_model
    t = jump_tensors(d, 5, torch.float64)
    root = write_saelens(tmp_path / "g3", t, _sl_cfg(
        d, model_name="google/gemma-3-1b-pt", hook_name=f"blocks.{L}.hook_mlp_in", hook_name_out=f"blocks.{L}.hook_mlp_out",
        hf_hook_name=f"model.layers.{L}.pre_feedforward_layernorm.output",
        hf_hook_name_out=f"model.layers.{L}.post_feedforward_layernorm.output"))
    tc = load_saelens(root, model=f.m64, hf_model=f.folder)
    assert tc.cfg.input_site == f"blocks.{L}.ln2.hook_normalized"
    ours = tc(tl_sites(f.m64, toks)["ln2.hook_normalized"])
    _check(ours, *jumprelu_ref(source_input_64(f, toks), t["W_enc"], t["b_enc"], t["threshold"], t["W_dec"],
                               t["b_dec"]), f, tol=1e-9)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_name_the_field_or_site(fams, tmp_path):
    llama, gemma, pythia = fams["llama3"], fams["gemma2"], fams["pythia"]
    d = llama.m32.cfg.d_model
    t = jump_tensors(d, 6, torch.float32)
    # another family: the cfg's model_name vs the target model
    root = write_saelens(tmp_path / "fam", t, _sl_cfg(
        d, model_name="gemma-2-2b", hook_name=f"blocks.{L}.ln2.hook_normalized", hook_name_out=f"blocks.{L}.hook_mlp_out"))
    with pytest.raises(ValueError, match=r"model_name 'gemma-2-2b' is a gemma2 checkpoint.*'llama3' \(LlamaForCausalLM\) is llama"):
        load_saelens(root, model=llama.m32)
    with pytest.raises(ValueError, match="layout 'GemmaScope .*params.npz' is a gemma2 checkpoint.*llama"):
        load_gemmascope(write_gemmascope(tmp_path / "gs", L, t), model=llama.m32)
    # weights of another family passed as hf_model
    folder, _ = write_sparsify(tmp_path / "sp", llama, torch.float32, f"layers.{L}.mlp")
    with pytest.raises(ValueError, match="hf_model.*gpt_neox checkpoint.*llama"):
        load_sparsify(folder, hf_model=pythia.folder, model=llama.m32)
    # d_model mismatch
    t_small = jump_tensors(32, 6, torch.float32)
    root = write_saelens(tmp_path / "dm", t_small, _sl_cfg(
        32, model_name="llama", hook_name=f"blocks.{L}.ln2.hook_normalized", hook_name_out=f"blocks.{L}.hook_mlp_out"))
    with pytest.raises(ValueError, match="d_in=32 does not match the target model's d_model=64"):
        load_saelens(root, model=llama.m32)
    # Gemma: an input after the gain without the weights to fold it, and the attention post-norm
    folder = write_gemmascope2(tmp_path / "g2a", L, t, model_name="gemma-2-2b")
    with pytest.raises(ValueError, match="pre_feedforward_layernorm.output.*ln2.hook_normalized.*hf_model="):
        load_gemmascope(folder, model=gemma.m32)
    folder = write_gemmascope2(tmp_path / "g2b", L, t, model_name="gemma-2-2b",
                               hook_in=f"model.layers.{L}.post_attention_layernorm.output")
    with pytest.raises(ValueError, match="post_attention_layernorm.*attention output's post-norm"):
        load_gemmascope(folder, hf_model=gemma.folder, model=gemma.m32)
    # Gemma: a transcoder written for the pre-norm MLP output, loaded at our post-norm site
    folder = write_gemmascope2(tmp_path / "g2c", L, t, hook_out=f"model.layers.{L}.mlp.output", model_name="gemma-2-2b")
    with pytest.raises(ValueError, match=r"'model.layers.1.mlp.output' is the MLP's output before Gemma's post-MLP norm"):
        load_gemmascope(folder, hf_model=gemma.folder, model=gemma.m32)
    # a residual SAE trained uncentred, onto the centred Pythia
    g = _gen(7)
    sae = {"W_enc": _r(g, d, N).float(), "b_enc": _r(g, N).float(), "W_dec": _r(g, N, d).float(), "b_dec": _r(g, d).float()}
    root = write_saelens(tmp_path / "cw", sae, {
        "architecture": "standard", "d_in": d, "d_sae": N, "model_name": "pythia", "hook_name": f"blocks.{L}.hook_resid_post",
        "model_from_pretrained_kwargs": {"center_writing_weights": False}})
    with pytest.raises(ValueError, match=r"'blocks.1.hook_resid_post'.*center_writing_weights=False.*center_writing_weights=True"):
        load_saelens(root, model=pythia.m32)
    assert load_saelens(root).cfg.weight_processing["center_writing_weights"] is False  # without a model: as before


# ----------------------------------------------------------------------------- entry points
def test_gemmascope_detected_converted_and_resolved_as_a_saelens_release(fams, tmp_path, monkeypatch):
    from tc_circuits.cli.convert import ConvertOptions, convert
    from tc_circuits.coders.transcoder import Transcoder
    from tc_circuits.formats import detect_format, load_any, load_saelens_release
    from tc_circuits.formats import hub

    f = fams["gemma3"]
    t = jump_tensors(f.m32.cfg.d_model, 8, torch.float32, skip=True)
    folder = write_gemmascope2(tmp_path, L, t)
    assert detect_format(folder) == detect_format(folder / "params.safetensors") == "gemmascope"
    direct = load_any(folder, hf_model=f.folder, model=f.m32)
    # the CLI reads the norm gains from --hf-model lazily (a folder) and writes our format
    out = convert(folder, tmp_path / "ours", ConvertOptions(src_format=None, hf_model=str(f.folder)))
    back = Transcoder.load(out)
    for key, v in direct.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], v, atol=0, rtol=0)
    # SAELens' gemma-scope-2b-pt-transcoders release (conversion gemma_2_transcoder) -> params.npz
    g2 = fams["gemma2"]
    npz = write_gemmascope(tmp_path / "repo", L, jump_tensors(g2.m32.cfg.d_model, 9, torch.float32))
    monkeypatch.setattr(hub, "saelens_release", lambda release, sae_id: {
        "repo_id": "google/gemma-scope-2b-pt-transcoders", "path": sae_id, "config_overrides": {},
        "norm_scaling_factor": None, "conversion_func": "gemma_2_transcoder", "model": "gemma-2-2b"})
    monkeypatch.setattr(hub, "download", lambda repo_id, subfolder=None, **kw: tmp_path / "repo" / subfolder)
    tc = load_saelens_release("gemma-scope-2b-pt-transcoders", str(npz.relative_to(tmp_path / "repo")))
    assert (tc.cfg.model_name, tc.cfg.layer, tc.cfg.input_site) == ("gemma-2-2b", L, f"blocks.{L}.ln2.hook_normalized")
    with pytest.raises(ValueError, match="gemma2 checkpoint.*llama"):
        load_saelens_release("gemma-scope-2b-pt-transcoders", str(npz.relative_to(tmp_path / "repo")),
                             model=fams["llama3"].m32)
    # GemmaScope 2 (conversion gemma_3): the per-layer transcoders, gain folded from hf_model
    monkeypatch.setattr(hub, "saelens_release", lambda release, sae_id: {
        "repo_id": "google/gemma-scope-2-1b-pt", "path": sae_id, "config_overrides": {},
        "norm_scaling_factor": None, "conversion_func": "gemma_3", "model": "google/gemma-3-1b-pt"})
    monkeypatch.setattr(hub, "download", lambda repo_id, subfolder=None, **kw: tmp_path / subfolder)
    rel = str(folder.relative_to(tmp_path))
    tc = load_saelens_release("gemma-scope-2-1b-pt-transcoders", rel, hf_model=f.folder, model=f.m32)
    torch.testing.assert_close(tc.W_enc, direct.W_enc, atol=0, rtol=0)
    with pytest.raises(ValueError, match="only its per-layer transcoders"):
        load_saelens_release("gemma-scope-2-1b-pt-res", "resid_post/layer_3_width_16k_l0_small")


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_norm_gains_equal_transformer_lens_conversion(name, tmp_path):
    """The MLP-input norm read from the HF folder (and the HF model) is what TransformerLens'
    own converter puts in ln2.w / ln2.b (unprocessed), for every family."""
    from tc_circuits.models.norm_gains import mlp_input_norm

    hf, folder = build_folder(family(name), tmp_path)
    tl = load_model(folder, fold_ln=False, center_writing_weights=False, center_unembed=False)
    for layer in range(tl.cfg.n_layers):
        w = tl.blocks[layer].ln2.w.detach()
        b = getattr(tl.blocks[layer].ln2, "b", None)
        for source in (folder, hf, tl):
            got = mlp_input_norm(source, layer)
            torch.testing.assert_close(got.gain.float(), w.float(), atol=0, rtol=0)
            torch.testing.assert_close(got.bias.float(), torch.zeros_like(w) if b is None else b.detach().float(),
                                       atol=0, rtol=0)
    processed = load_model(folder)
    with pytest.raises(ValueError, match="no MLP-input norm"):
        mlp_input_norm(processed, 0)
    if name == "llama3":  # sharded folders (safetensors index, torch .bin index) read the same
        for kind, safe in (("st", True), ("bin", False)):
            hf.save_pretrained(tmp_path / kind, max_shard_size="20KB", safe_serialization=safe)
            got = mlp_input_norm(tmp_path / kind, 1)
            torch.testing.assert_close(got.gain, tl.blocks[1].ln2.w.detach(), atol=0, rtol=0)


def test_gemmascope_tree_on_gemma3_gives_an_exact_graph(fams, tmp_path):
    """A GemmaScope-2 tree (one folder per layer) loads as a set through load_any; the graph
    built with it (gain folded into every layer's encoder) is exact."""
    from tc_circuits.formats import detect_format, load_any

    f, toks = fams["gemma3"], _tokens()
    for layer in range(f.m64.cfg.n_layers):
        write_gemmascope2(tmp_path / "tree", layer, jump_tensors(f.m64.cfg.d_model, 20 + layer, torch.float64, skip=True))
    assert detect_format(tmp_path / "tree") == "gemmascope"
    tcs = load_any(tmp_path / "tree", hf_model=f.folder, model=f.m64)
    assert sorted(tcs) == [0, 1] and all(tc.cfg.extra["gain_folded"] for tc in tcs.values())
    target = logit_target(7, VOCAB)
    graph = attribute(f.m64, tcs, toks, targets=[target], progress=False, batch_size=16)
    assert graph.metadata["exactness_max_abs_dev"] < 1e-9
    check_edges_by_intervention(graph, f.m64, tcs, toks, [target], n_features=8)
    write_gemmascope2(tmp_path / "tree" / "other", 1, jump_tensors(f.m64.cfg.d_model, 30, torch.float64))
    with pytest.raises(ValueError, match="several GemmaScope transcoders for one layer"):
        load_any(tmp_path / "tree", hf_model=f.folder, model=f.m64)


def test_command_line_resolves_gemmascope_with_the_model_folder(fams, tmp_path):
    """``--model FOLDER --transcoders TREE``: the folder's unprocessed gains fold into the encoders."""
    from tc_circuits.cli.resolve import ModelOptions, resolve

    f = fams["gemma3"]
    for layer in range(f.m32.cfg.n_layers):
        write_gemmascope2(tmp_path / "tree", layer, jump_tensors(f.m32.cfg.d_model, 40 + layer, torch.float32))
    got = resolve(ModelOptions(model=str(f.folder), transcoders=str(tmp_path / "tree"), device="cpu"))
    direct = load_gemmascope(tmp_path / "tree" / "transcoder" / f"layer_{L}_width_16k_l0_small", hf_model=f.folder,
                             model=f.m32)
    assert sorted(got.transcoders) == [0, 1]
    torch.testing.assert_close(got.transcoders[L].W_enc, direct.W_enc, atol=0, rtol=0)


def test_sparsify_sae_on_gemma_post_feedforward_norm(fams, tmp_path):
    """An SAE on Gemma's layers.L.post_feedforward_layernorm reads its output: our hook_mlp_out."""
    f, toks = fams["gemma2"], _tokens()
    hookpoint = f"layers.{L}.post_feedforward_layernorm"
    g, d = _gen(11), f.m32.cfg.d_model
    t = {"encoder.weight": _r(g, N, d, scale=d ** -0.5).float(), "encoder.bias": _r(g, N, scale=0.1).float(),
         "W_dec": _r(g, N, d, scale=0.3).float(), "b_dec": _r(g, d, scale=0.1).float()}
    (tmp_path / hookpoint).mkdir()
    save_file(t, str(tmp_path / hookpoint / "sae.safetensors"))
    (tmp_path / hookpoint / "cfg.json").write_text(json.dumps({"d_in": d, "num_latents": N, "k": 5}))
    tc = load_sparsify(tmp_path / hookpoint, model=f.m32)
    assert tc.cfg.input_site == tc.cfg.output_site == f"blocks.{L}.hook_mlp_out"
    y = hf_sites(f, toks)["post_out"]
    pre = torch.relu((y - t["b_dec"].double()) @ t["encoder.weight"].double().T + t["encoder.bias"].double())
    vals, idx = pre.topk(5, dim=-1)
    lat = torch.zeros_like(pre).scatter(-1, idx, vals)
    ours = tc(tl_sites(f.m32, toks)["hook_mlp_out"])
    _check(ours, lat, lat @ t["W_dec"].double() + t["b_dec"].double(), f, tol=TOL32)
    (tmp_path / hookpoint / "cfg.json").write_text(json.dumps({"d_in": d, "num_latents": N, "k": 5, "transcode": True}))
    with pytest.raises(ValueError, match="only SAEs on it"):
        load_sparsify(tmp_path / hookpoint, model=f.m32)
