"""load_from_hub (huggingface_hub stubbed by a local folder; no network) and `tc-circuits convert`."""

from __future__ import annotations

import huggingface_hub
import pytest
import torch

from tc_circuits.cli import main
from tc_circuits.formats import load_circuit_tracer, load_from_hub, load_saelens, save_saelens
from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig


def _tc(layer=0, activation="relu", skip=True):
    cfg = TranscoderConfig(d_in=8, d_out=8, n_latents=16, input_site=f"blocks.{layer}.ln2.hook_normalized",
                           output_site=f"blocks.{layer}.hook_mlp_out", activation=activation, k=None, skip=skip)
    tc = Transcoder(cfg)
    g = torch.Generator().manual_seed(layer)
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return tc


def _same(a, b):
    return all(torch.equal(p, dict(b.named_parameters())[n]) for n, p in a.named_parameters())


def test_load_from_hub_snapshot(tmp_path, monkeypatch):
    repo = tmp_path / "snapshot"
    save_saelens(_tc(), repo / "layer_0" / "sae")
    calls = []

    def fake_snapshot(**kwargs):
        calls.append(kwargs)
        return str(repo)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    tc = load_from_hub("someone/saes", subfolder="layer_0/sae", revision="v1", cache_dir=tmp_path / "cache")
    assert calls == [{"repo_id": "someone/saes", "revision": "v1", "cache_dir": str(tmp_path / "cache"),
                      "allow_patterns": ["layer_0/sae/*"]}]
    assert _same(tc, _tc())


def test_load_from_hub_single_file(tmp_path, monkeypatch):
    save_saelens(_tc(), tmp_path / "x")
    calls = []

    def fake_file(**kwargs):
        calls.append(kwargs)
        return str(tmp_path / "x" / "cfg.json")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_file)
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_from_hub("a/b", filename="cfg.json", subfolder="x", revision="main")
    assert calls[0] == {"repo_id": "a/b", "filename": "cfg.json", "subfolder": "x", "revision": "main",
                        "cache_dir": None}
    with pytest.raises(ValueError, match="owner/name"):
        load_from_hub("not-a-repo")


def test_convert_cli_round_trip(tmp_path, capsys, monkeypatch):
    import tc_circuits.cli

    assert "convert" in tc_circuits.cli.SUBCOMMANDS
    monkeypatch.setattr(tc_circuits.cli, "SUBCOMMANDS", ["convert"])  # independent of other subcommands
    save_saelens(_tc(), tmp_path / "sl")
    assert main(["convert", str(tmp_path / "sl"), str(tmp_path / "ours")]) == 0
    ours = Transcoder.load(tmp_path / "ours")
    assert _same(ours, _tc())
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "ct"), "--to", "circuit-tracer"]) == 0
    assert _same(load_circuit_tracer(tmp_path / "ct")[0], _tc())
    assert main(["convert", str(tmp_path / "ct"), str(tmp_path / "sl2"), "--from", "circuit-tracer",
                 "--to", "saelens"]) == 0
    assert _same(load_saelens(tmp_path / "sl2" / "layer_0"), _tc())
    assert "wrote saelens" in capsys.readouterr().out
    # unmappable input: a clear error and exit status 2
    assert main(["convert", str(tmp_path / "nothing"), str(tmp_path / "z")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def hub_cache(root, repo_id, files):
    """A Hugging Face hub cache holding one snapshot of ``repo_id`` (the layout huggingface_hub
    writes: refs/main -> snapshots/<commit>/...)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    for rel, write in files.items():
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        write(snap / rel)
    return snap


def test_load_from_hub_offline_cache_real_client(tmp_path, monkeypatch):
    """No stub: huggingface_hub itself resolves the cached snapshot with HF_HUB_OFFLINE=1."""
    src = tmp_path / "src"
    save_saelens(_tc(), src)
    files = {f"blocks.0.hook/{f.name}": (lambda p, f=f: p.write_bytes(f.read_bytes())) for f in src.iterdir()}
    hub_cache(tmp_path / "cache", "someone/saes", files)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    tc = load_from_hub("someone/saes", subfolder="blocks.0.hook", cache_dir=tmp_path / "cache")
    assert _same(tc, _tc())


def test_saelens_release_needs_sae_lens_or_says_so(monkeypatch):
    import sys

    from tc_circuits.formats import load_saelens_release

    monkeypatch.setitem(sys.modules, "sae_lens", None)  # as on an install without SAELens
    monkeypatch.setitem(sys.modules, "sae_lens.loading.pretrained_saes_directory", None)
    with pytest.raises(ValueError, match="sae-lens"):
        load_saelens_release("gpt2-small-res-jb", "blocks.0.hook_resid_pre")


def test_convert_topk_to_circuit_tracer_needs_allow_topk(tmp_path, monkeypatch, capsys):
    import tc_circuits.formats.circuit_tracer as ct

    monkeypatch.setattr(ct, "installed_reads_topk", lambda: None)  # as without circuit-tracer
    tc = Transcoder(TranscoderConfig(d_in=8, d_out=8, n_latents=16, input_site="blocks.0.ln2.hook_normalized",
                                     output_site="blocks.0.hook_mlp_out", activation="topk", k=4))
    with torch.no_grad():
        tc.W_dec.normal_(generator=torch.Generator().manual_seed(1))
    tc.save(tmp_path / "ours")
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "ct"), "--to", "circuit-tracer"]) != 0
    assert "--allow-topk" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "ct"), "--to", "circuit-tracer", "--allow-topk"]) == 0
    back = load_circuit_tracer(tmp_path / "ct")[0]
    assert (back.cfg.activation, back.cfg.k) == ("topk", 4) and _same(back, tc)
