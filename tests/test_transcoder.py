"""Transcoder: equation vs a reference, init, sparsity, checkpoints, model checks, config checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tc_circuits.coders.transcoder as transcoder_mod
from conftest import make_tiny_model
from tc_circuits.coders.transcoder import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    Transcoder,
    TranscoderConfig,
    TranscoderSet,
)

D = 16
N = 40


def _cfg(activation: str = "topk", skip: bool = False, **kw) -> TranscoderConfig:
    kw.setdefault("k", 5 if activation == "topk" else None)
    kw.setdefault("n_latents", N)
    return TranscoderConfig(d_in=D, d_out=D, activation=activation, skip=skip, **kw)


def _randomise(tc: Transcoder, seed: int = 0) -> Transcoder:
    """Give every parameter (decoder, skip, biases, thresholds too) random non-zero values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in tc.named_parameters():
            if name == "log_threshold":
                p.copy_(torch.log(0.05 + 0.3 * torch.rand(p.shape, generator=gen)))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return tc


def _x(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _reference(tc: Transcoder, x: torch.Tensor) -> torch.Tensor:
    """f(x) = act(x W_enc + b_enc) W_dec + x W_skip + b_dec, written out in float64 loops-free."""
    W_enc, b_enc = tc.W_enc.detach().double(), tc.b_enc.detach().double()
    W_dec, b_dec = tc.W_dec.detach().double(), tc.b_dec.detach().double()
    z = x.double() @ W_enc + b_enc
    act = tc.cfg.activation
    if act == "relu":
        a = torch.clamp(z, min=0)
    elif act == "jumprelu":
        theta = tc.log_threshold.detach().double().exp()
        a = z * (z > theta).double()
    else:
        k = tc.cfg.k
        kth = z.sort(-1, descending=True).values[..., k - 1 : k]
        a = torch.clamp(z, min=0) * (z >= kth).double()
    out = a @ W_dec + b_dec
    if tc.cfg.skip:
        out = out + x.double() @ tc.W_skip.detach().double()
    return out


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("activation", ["topk", "relu", "jumprelu"])
def test_forward_matches_equation(activation: str, skip: bool) -> None:
    tc = _randomise(Transcoder(_cfg(activation, skip)))
    x = _x(3, 7, D)
    out = tc(x)
    ref = _reference(tc, x)
    assert out.output.shape == (3, 7, D) and out.latents.shape == (3, 7, N)
    assert torch.allclose(out.output.double(), ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(out.pre_acts.double(), x.double() @ tc.W_enc.double() + tc.b_enc.double(), atol=1e-5)
    assert torch.equal(tc.encode(x), out.latents)
    assert torch.allclose(tc.decode(out.latents, x), out.output, atol=1e-6)
    if skip:
        with pytest.raises(ValueError, match="needs the input x"):
            tc.decode(out.latents)


def test_zero_init_outputs_the_mean_exactly() -> None:
    for skip in (False, True):
        tc = Transcoder(_cfg("topk", skip))
        assert not tc.W_dec.any() and not tc.b_dec.any()
        assert tc.W_skip is None if not skip else not tc.W_skip.any()
        y = _x(200, D, seed=2) * 3 + 1
        tc.init_from_data(y)
        x = _x(50, D, seed=3)
        out = tc(x).output
        assert torch.equal(out, y.mean(0).expand(50, D))


def test_init_from_data_rejects_wrong_width() -> None:
    tc = Transcoder(_cfg())
    with pytest.raises(ValueError, match=rf"\[batch, {D}\]"):
        tc.init_from_data(torch.zeros(4, D + 1))


def test_topk_keeps_exactly_k_latents() -> None:
    tc = _randomise(Transcoder(_cfg("topk", k=7)))
    with torch.no_grad():
        tc.b_enc.fill_(100.0)  # every pre-activation positive: the active set is exactly k
    lat = tc(_x(30, D)).latents
    assert ((lat != 0).sum(-1) == 7).all()
    tc2 = _randomise(Transcoder(_cfg("topk", k=7)))
    assert ((tc2(_x(30, D)).latents != 0).sum(-1) <= 7).all()


def test_skip_path_equals_x_W_skip() -> None:
    tc = _randomise(Transcoder(_cfg("relu", skip=True)))
    with torch.no_grad():
        tc.W_dec.zero_()
        tc.b_dec.zero_()
    x = _x(9, D)
    assert torch.equal(tc(x).output, x @ tc.W_skip)
    assert torch.equal(tc.skip_out(x), x @ tc.W_skip)
    assert torch.equal(Transcoder(_cfg("relu")).skip_out(x), torch.zeros(9, D))


def test_wrong_input_width() -> None:
    tc = Transcoder(_cfg())
    with pytest.raises(ValueError, match=f"d_in={D}"):
        tc(torch.zeros(2, D + 3))


def test_reset_parameters_uses_generator_and_kaiming_bound() -> None:
    a, b = Transcoder(_cfg()), Transcoder(_cfg())
    a.reset_parameters(torch.Generator().manual_seed(4))
    b.reset_parameters(torch.Generator().manual_seed(4))
    assert torch.equal(a.W_enc, b.W_enc)
    assert a.W_enc.abs().max() <= 1 / D**0.5


# ----------------------------------------------------------------------------- model configs


def test_for_model_kinds_and_sae_mode() -> None:
    model = make_tiny_model(n_layers=2, d_model=32)
    tc_cfg = TranscoderConfig.for_model(model, 1, 64, k=4)
    assert tc_cfg.input_site == "blocks.1.ln2.hook_normalized"
    assert tc_cfg.output_site == "blocks.1.hook_mlp_out"
    assert (tc_cfg.d_in, tc_cfg.d_out, tc_cfg.skip, tc_cfg.is_sae, tc_cfg.layer) == (32, 32, False, False, 1)
    assert tc_cfg.model_name == "tiny-test" and tc_cfg.model_d_model == 32
    assert TranscoderConfig.for_model(model, 0, 64, kind="skip_transcoder").skip
    sae_cfg = TranscoderConfig.for_model(model, 1, 64, kind="sae", k=4)
    assert sae_cfg.is_sae and sae_cfg.input_site == sae_cfg.output_site == "blocks.1.hook_mlp_out"
    sae = _randomise(Transcoder(sae_cfg))
    sae.check_compatible(model)
    _, cache = model.run_with_cache(torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0)))
    y = cache["blocks.1.hook_mlp_out"]
    out = sae(y)
    assert torch.allclose(out.output.double(), _reference(sae, y), atol=1e-5)
    with pytest.raises(ValueError, match="'mlp'"):
        TranscoderConfig.for_model(model, 0, 64, kind="mlp")


def test_for_model_layer_out_of_range() -> None:
    model = make_tiny_model(n_layers=2)
    with pytest.raises(ValueError, match="layer 2 out of range"):
        TranscoderConfig.for_model(model, 2, 64)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=41), "k=41"),
        (dict(k=0), "k=0"),
        (dict(k=None), "k=None"),
        (dict(activation="gelu"), "'gelu'"),
        (dict(input_site="blocks.0.hook_nope"), "'blocks.0.hook_nope'"),
        (dict(output_site="mlp_out"), "'mlp_out'"),
        (dict(n_latents=0), "n_latents"),
        (dict(d_in=-3), "d_in"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    base = dict(d_in=D, d_out=D, n_latents=N, k=5)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        TranscoderConfig(**base)


def test_config_relu_ignores_k_and_from_dict_rejects_unknown_keys() -> None:
    cfg = TranscoderConfig(d_in=D, d_out=D, n_latents=N, activation="relu", k=None)
    assert TranscoderConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(n_latents=80).n_latents == 80 and cfg.n_latents == N
    with pytest.raises(ValueError, match="bogus"):
        TranscoderConfig.from_dict({**cfg.to_dict(), "bogus": 1})


# ----------------------------------------------------------------------------- save / load


def _assert_same(a: Transcoder, b: Transcoder) -> None:
    assert a.cfg == b.cfg
    sa, sb = a.state_tensors(), b.state_tensors()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert torch.equal(sa[name], sb[name]), name


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("activation", ["topk", "relu", "jumprelu"])
def test_save_load_bit_exact(tmp_path: Path, activation: str, skip: bool) -> None:
    tc = _randomise(Transcoder(_cfg(activation, skip, extra={"note": "x"}, weight_processing={"fold_ln": True})))
    tc.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    loaded = Transcoder.load(tmp_path / "ckpt")
    _assert_same(tc, loaded)
    x = _x(5, D)
    assert torch.equal(tc(x).output, loaded(x).output)


def test_save_load_keeps_dtype(tmp_path: Path) -> None:
    tc = _randomise(Transcoder(_cfg("relu", skip=True), dtype=torch.float64))
    tc.save(tmp_path)
    loaded = Transcoder.load(tmp_path)
    assert loaded.W_enc.dtype == torch.float64
    _assert_same(tc, loaded)


def test_truncated_weights_raise_naming_the_file(tmp_path: Path) -> None:
    _randomise(Transcoder(_cfg())).save(tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    data = weights.read_bytes()
    for cut in (4, len(data) // 2, len(data) - 3):
        weights.write_bytes(data[:cut])
        with pytest.raises(ValueError) as err:
            Transcoder.load(tmp_path)
        assert str(weights) in str(err.value)


def test_corrupted_config_raises_naming_the_file(tmp_path: Path) -> None:
    _randomise(Transcoder(_cfg())).save(tmp_path)
    cfg_path = tmp_path / CONFIG_NAME
    good = cfg_path.read_text()
    bad_contents = [
        good[: len(good) // 2],  # truncated JSON
        "[1, 2, 3]",  # JSON, but not an object
        json.dumps({**json.loads(good), "bogus_key": 1}),  # unknown key
        json.dumps({**json.loads(good), "k": 10_000}),  # fails validation
    ]
    for text in bad_contents:
        cfg_path.write_text(text)
        with pytest.raises(ValueError) as err:
            Transcoder.load(tmp_path)
        assert str(cfg_path) in str(err.value), text


def test_weights_that_do_not_match_config(tmp_path: Path) -> None:
    _randomise(Transcoder(_cfg())).save(tmp_path)
    cfg_path = tmp_path / CONFIG_NAME
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "n_latents": N + 1}))
    with pytest.raises(ValueError, match=r"W_enc has shape \(16, 40\), config implies \(16, 41\)"):
        Transcoder.load(tmp_path)
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "n_latents": N, "skip": True}))
    with pytest.raises(ValueError, match=r"missing tensors \['W_skip'\]"):
        Transcoder.load(tmp_path)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        Transcoder.load(tmp_path)


def test_load_onto_model_checks_width_and_processing(tmp_path: Path) -> None:
    raw = make_tiny_model(d_model=32)
    tc = _randomise(Transcoder(TranscoderConfig.for_model(raw, 1, 64, k=4)))
    assert tc.cfg.weight_processing == {"fold_ln": False, "center_writing_weights": False, "center_unembed": False}
    tc.save(tmp_path)
    _assert_same(tc, Transcoder.load(tmp_path, model=make_tiny_model(d_model=32)))

    wide = make_tiny_model(d_model=48)
    with pytest.raises(ValueError, match="d_in=32"):
        Transcoder.load(tmp_path, model=wide)

    processed = make_tiny_model(d_model=32)
    processed.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    with pytest.raises(ValueError) as err:
        Transcoder.load(tmp_path, model=processed)
    for flag in ("fold_ln", "center_writing_weights", "center_unembed"):
        assert f"{flag}=False (model: {flag}=True)" in str(err.value)

    # Only centering differs: the message names that flag.
    centred_only = make_tiny_model(d_model=32)
    centred_only.process_weights_(fold_ln=False, center_writing_weights=True, center_unembed=False)
    with pytest.raises(ValueError) as err:
        Transcoder.load(tmp_path, model=centred_only)
    assert "center_writing_weights=False (model: center_writing_weights=True)" in str(err.value)
    assert "fold_ln" not in str(err.value) and "center_unembed" not in str(err.value)

    other = make_tiny_model(d_model=32, model_name="other-model")
    with pytest.raises(ValueError, match="'tiny-test'"):
        Transcoder.load(tmp_path, model=other)


def test_transcoder_set_round_trip(tmp_path: Path) -> None:
    model = make_tiny_model(n_layers=2)
    tset = TranscoderSet(
        {layer: _randomise(Transcoder(TranscoderConfig.for_model(model, layer, 48, kind="skip_transcoder", k=3)), layer)
         for layer in range(2)}
    )
    tset.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer_0", "layer_1"]
    loaded = TranscoderSet.load(tmp_path, model=model)
    assert sorted(loaded) == [0, 1]
    for layer in range(2):
        _assert_same(tset[layer], loaded[layer])
    with pytest.raises(FileNotFoundError, match="no layer_"):
        TranscoderSet.load(tmp_path / "layer_0")


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_interrupted_weight_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    old = _randomise(Transcoder(_cfg("jumprelu", skip=True)), seed=1)
    old.save(tmp_path)
    before = _files(tmp_path)

    def broken_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\x08\x00\x00partial")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(transcoder_mod, "save_file", broken_save_file)
    new = _randomise(Transcoder(_cfg("jumprelu", skip=True)), seed=2)
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path)
    assert _files(tmp_path) == before  # bit-identical, and no temporary files left
    _assert_same(old, Transcoder.load(tmp_path))


def test_interrupted_config_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """A crash after the weights are written but before cfg.json must not mix old and new."""
    old = _randomise(Transcoder(_cfg("relu")), seed=1)
    old.save(tmp_path)
    before = _files(tmp_path)
    real_write_text = Path.write_text

    def broken_write_text(self, data, *args, **kwargs):
        if CONFIG_NAME in self.name:
            real_write_text(self, data[:10])
            raise OSError("disk full")
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", broken_write_text)
    new = _randomise(Transcoder(_cfg("relu", n_latents=2 * N)), seed=2)
    with pytest.raises(OSError, match="disk full"):
        new.save(tmp_path)
    monkeypatch.undo()
    assert _files(tmp_path) == before
    _assert_same(old, Transcoder.load(tmp_path))


def test_init_false_skips_only_the_random_init_and_loading_fills_every_parameter(tmp_path: Path) -> None:
    cfg = _cfg("jumprelu", skip=True)
    calls = []
    orig = Transcoder.reset_parameters
    try:
        Transcoder.reset_parameters = lambda self, generator=None: calls.append(1)  # type: ignore[method-assign]
        bare = Transcoder(cfg, init=False)
        assert calls == []  # the loaders' path: no random init to overwrite
        Transcoder(cfg)
        assert calls == [1]
    finally:
        Transcoder.reset_parameters = orig  # type: ignore[method-assign]
    assert [n for n, _ in bare.named_parameters()] == [n for n, _ in Transcoder(cfg).named_parameters()]
    src = _randomise(Transcoder(cfg), seed=4)
    src.save(tmp_path)
    loaded = Transcoder.load(tmp_path)  # built with init=False, then every parameter loaded
    _assert_same(src, loaded)
    bare.load_tensors({n: p.detach() for n, p in src.named_parameters()})
    _assert_same(src, bare)
    with pytest.raises(ValueError, match="missing tensors"):  # a partial load is refused, so nothing stays uninitialised
        Transcoder(cfg, init=False).load_tensors({"W_enc": src.W_enc.detach()})
