"""Dunefsky et al. .pt transcoders: safe loading, exact b_dec folding, malicious pickles refused."""

from __future__ import annotations

import dataclasses
import os
import sys
import types

import pytest
import torch

from tc_circuits.formats import detect_format, load_any, load_dunefsky, safe_torch_load

D, N = 8, 32


@pytest.fixture
def fake_training_module(monkeypatch):
    """The ``sae_training.config`` module the real files were pickled from (not importable here)."""
    pkg, mod = types.ModuleType("sae_training"), types.ModuleType("sae_training.config")

    @dataclasses.dataclass
    class LanguageModelSAERunnerConfig:
        model_name: str = "gpt2-small"
        hook_point: str = "blocks.8.ln2.hook_normalized"
        hook_point_layer: int = 8
        hook_point_head_index: int | None = None
        d_in: int = D
        d_out: int | None = D
        expansion_factor: int = N // D
        is_transcoder: bool = True
        out_hook_point: str | None = "blocks.8.hook_mlp_out"
        out_hook_point_layer: int | None = 8
        l1_coefficient: float = 1e-3
        dtype: torch.dtype = torch.float32
        device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
        use_ghost_grads: tuple = (False,)

        def __post_init__(self):
            self.d_sae = self.d_in * self.expansion_factor

    LanguageModelSAERunnerConfig.__module__ = "sae_training.config"
    LanguageModelSAERunnerConfig.__qualname__ = "LanguageModelSAERunnerConfig"
    mod.LanguageModelSAERunnerConfig = LanguageModelSAERunnerConfig
    pkg.config = mod
    monkeypatch.setitem(sys.modules, "sae_training", pkg)
    monkeypatch.setitem(sys.modules, "sae_training.config", mod)
    return LanguageModelSAERunnerConfig


def _state(is_transcoder=True):
    g = torch.Generator().manual_seed(0)
    sd = {"W_enc": torch.randn(D, N, generator=g), "b_enc": torch.randn(N, generator=g),
          "W_dec": torch.randn(N, D, generator=g), "b_dec": torch.randn(D, generator=g)}
    if is_transcoder:
        sd["b_dec_out"] = torch.randn(D, generator=g)
    return sd


def reference_forward(sd, x, is_transcoder=True):
    """transcoder_circuits SparseAutoencoder.forward."""
    acts = torch.relu((x - sd["b_dec"]) @ sd["W_enc"] + sd["b_enc"])
    return acts @ sd["W_dec"] + (sd["b_dec_out"] if is_transcoder else sd["b_dec"]), acts


@pytest.mark.parametrize("is_transcoder", [True, False])
def test_load_matches_reference(tmp_path, fake_training_module, monkeypatch, is_transcoder):
    cfg = fake_training_module(is_transcoder=is_transcoder)
    sd = _state(is_transcoder)
    path = tmp_path / "final_sparse_autoencoder_gpt2-small_blocks.8.ln2.hook_normalized_32.pt"
    torch.save({"cfg": cfg, "state_dict": sd}, path)
    # the real class is unavailable when loading: nothing is imported from the file
    monkeypatch.delitem(sys.modules, "sae_training.config")
    assert detect_format(path) == "dunefsky"
    tc = load_any(path)
    x = torch.randn(6, D, generator=torch.Generator().manual_seed(4))
    ref_out, ref_acts = reference_forward(sd, x, is_transcoder)
    out = tc(x)
    assert torch.allclose(out.latents, ref_acts, atol=1e-5)
    assert torch.allclose(out.output, ref_out, atol=1e-4)
    assert tc.cfg.activation == "relu" and tc.cfg.model_name == "gpt2"
    assert tc.cfg.input_site == "blocks.8.ln2.hook_normalized"
    assert tc.cfg.output_site == ("blocks.8.hook_mlp_out" if is_transcoder else "blocks.8.ln2.hook_normalized")
    assert tc.cfg.weight_processing == {"fold_ln": True, "center_writing_weights": True, "center_unembed": True}
    # the fold is exact up to one float32 rounding
    expected = (sd["b_enc"].double() - sd["b_dec"].double() @ sd["W_enc"].double()).float()
    assert torch.equal(tc.b_enc.detach(), expected)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"cfg": _Evil(marker), "state_dict": _state()}, path)
    with pytest.raises(ValueError, match="refusing to load"):
        load_dunefsky(path)
    assert not marker.exists()
    with pytest.raises(ValueError, match="refusing"):
        safe_torch_load(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # control: an unrestricted load does run the payload
    assert marker.exists()


def test_bad_files(tmp_path, fake_training_module):
    cfg = fake_training_module(d_in=D + 1)
    torch.save({"cfg": cfg, "state_dict": _state()}, tmp_path / "a.pt")
    with pytest.raises(ValueError, match="d_in"):
        load_dunefsky(tmp_path / "a.pt")
    torch.save({"state_dict": _state()}, tmp_path / "b.pt")
    with pytest.raises(ValueError, match="'cfg'"):
        load_dunefsky(tmp_path / "b.pt")
    sd = _state()
    del sd["b_dec_out"]
    torch.save({"cfg": fake_training_module(), "state_dict": sd}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="b_dec_out"):
        load_dunefsky(tmp_path / "c.pt")
    (tmp_path / "d.pt").write_bytes(b"not a pickle")
    with pytest.raises(ValueError):
        load_dunefsky(tmp_path / "d.pt")


def test_gzipped_pickle_loads_and_other_files_say_what_is_expected(tmp_path, fake_training_module, monkeypatch):
    import gzip
    import io

    cfg = fake_training_module(is_transcoder=True)
    sd = _state(True)
    buf = io.BytesIO()
    torch.save({"cfg": cfg, "state_dict": sd}, buf)
    path = tmp_path / "tc.pkl.gz"
    path.write_bytes(gzip.compress(buf.getvalue()))
    monkeypatch.delitem(sys.modules, "sae_training.config")
    assert detect_format(path) == "dunefsky"
    tc = load_any(path)
    x = torch.randn(6, D, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(tc(x).output, reference_forward(sd, x)[0], atol=1e-4)
    (tmp_path / "bad.pkl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="bad.pkl.gz"):
        load_any(tmp_path / "bad.pkl.gz")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"\.pkl\.gz"):
        detect_format(tmp_path / "x.txt")
