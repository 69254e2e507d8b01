"""The research loop from the command line: train -> evaluate -> attribute -> intervene -> view.

Every command runs end to end on the bundled organism and on a second model (a random
GPT-2-shaped Hugging Face folder written with ``save_pretrained``), the failure cases the
issue names are checked (mismatched dictionaries refused, a mis-tokenised target warned, an
impossible budget warned), and the command line gives the same numbers as the Python API.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from tc_circuits.cli import main
from tc_circuits.cli.resolve import ModelOptions, resolve, resolve_for_graph
from tc_circuits.coders.hashing import transcoder_hash
from tc_circuits.graph import AttributionGraph
from tc_circuits.graph.provenance import ProvenanceError

ROOT = Path(__file__).resolve().parents[1]
GT_PROMPT = "The war lasted from the year 1732 to the year 17"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def gpt2_dirs(tmp_path_factory):
    """A random GPT-2-shaped HF folder (with the organism's tokenizer) and a text dataset."""
    import datasets
    from transformers import GPT2Config, GPT2LMHeadModel

    from tc_circuits.organism import organism_tokenizer
    from tc_circuits.organism.corpus import documents

    root = tmp_path_factory.mktemp("gpt2")
    tok = organism_tokenizer()
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    hf.save_pretrained(root / "tiny-gpt2")
    tok.save_pretrained(root / "tiny-gpt2")
    docs = documents(3, n_sentences=4)
    texts = [next(docs) for _ in range(48)]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(root / "data"))
    return root / "tiny-gpt2", root / "data"


@pytest.fixture(scope="module")
def gpt2_trained(gpt2_dirs, tmp_path_factory):
    """``tc-circuits train`` on the GPT-2 folder: its run folder and what it printed."""
    model_dir, data_dir = gpt2_dirs
    out = tmp_path_factory.mktemp("gpt2_run")
    argv = ["train", "--model", str(model_dir), "--dataset", str(data_dir), "--seq-len", "32",
            "--n-latents", "64", "--k", "4", "--batch-size", "256", "--total-tokens", "2560",
            "--buffer-tokens", "512", "--warmup-steps", "2", "--dead-tokens-threshold", "1024",
            "--log-every", "5", "--decay-fraction", "0.2", "--eval-sequences", "8", "--out-dir", str(out),
            "--no-progress", "--kind", "transcoder"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(argv)
    assert rc == 0
    return out, buf.getvalue()


def run_cli(argv, capsys):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# ----------------------------------------------------------------------------- --help
@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["evaluate", "--help"], ["attribute", "--help"],
                                  ["intervene", "--help"], ["demo", "--help"], ["view", "--help"],
                                  ["compare", "--help"]])
def test_help_imports_neither_torch_nor_transformer_lens(argv):
    code = (
        "import sys\nfrom tc_circuits.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'transformer_lens', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("HEAVY []"), res.stdout[-300:]
    assert "usage: tc-circuits" in res.stdout


@pytest.mark.parametrize("ref", ["tc_circuits.attribution.engine:AttributionConfig",
                                 "tc_circuits.viz.graph_view:GraphViewConfig",
                                 "tc_circuits.viz.dashboards:DashboardConfig",
                                 "tc_circuits.evaluation.compare:CompareConfig"])
def test_configs_read_from_source_equal_the_real_ones(ref):
    """--help reads these configs' fields from their source: names, types, defaults and docs
    must be exactly the imported dataclass's (so the CLI cannot drift from the API)."""
    import dataclasses
    from typing import get_type_hints

    from tc_circuits.cli.dataclass_args import config_class, field_docs, static_dataclass

    module, _, name = ref.partition(":")
    static, real = static_dataclass(module, name), config_class(ref)
    assert static is not None
    sf, rf = dataclasses.fields(static), [f for f in dataclasses.fields(real) if f.init]
    assert [f.name for f in sf] == [f.name for f in rf]
    assert [f.default for f in sf] == [f.default for f in rf]
    hs, hr = get_type_hints(static), get_type_hints(real)
    assert all(hs[f.name] == hr[f.name] for f in sf), name
    assert static.__field_docs__ == field_docs(real)


def test_every_command_takes_model_options_and_no_progress():
    from tc_circuits.cli import SUBCOMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("train", "evaluate", "attribute", "intervene", "view", "demo", "compare"):
        flags = {s for a in sub.choices[name]._actions for s in a.option_strings}
        assert "--model" in flags and "--device" in flags, name
        assert "--no-progress" in flags, name
        if name not in ("train", "compare"):
            assert "--transcoders" in flags, name
    assert set(SUBCOMMANDS) >= {"evaluate", "intervene"}
    for name in SUBCOMMANDS:  # --no-progress everywhere (organism: on its train action)
        p = sub.choices[name]
        if name == "organism":
            p = next(a for a in p._actions if a.dest == "action").choices["train"]
        assert "--no-progress" in {s for a in p._actions for s in a.option_strings}, name


# ----------------------------------------------------------------------------- hashes
def test_transcoder_hash_is_deterministic_and_sensitive(tmp_path):
    from tc_circuits.coders.transcoder import Transcoder
    from tc_circuits.organism import load_organism_transcoders

    tcs = load_organism_transcoders("transcoder")
    tc = tcs[0]
    h = transcoder_hash(tc)
    assert h == transcoder_hash(Transcoder.load(tc.save(tmp_path / "t")))  # save / load round trip
    assert len({transcoder_hash(t) for t in tcs.values()}) == 3  # layers differ
    assert h != transcoder_hash(load_organism_transcoders("skip_transcoder")[0])
    with torch.no_grad():
        tc.W_dec[3, 5] += 1e-6  # one weight, barely
    assert transcoder_hash(tc) != h
    changed = Transcoder(tc.cfg.replace(k=tc.cfg.k + 1))
    changed.load_tensors(tc.state_tensors())
    assert transcoder_hash(changed) != transcoder_hash(tc)


# ----------------------------------------------------------------------------- targets
def test_target_tokens_read_as_inside_the_prompt_and_negligible_ones_warned():
    from tc_circuits.attribution.targets import resolve_targets, token_in_context
    from tc_circuits.organism import load_organism

    model = load_organism()
    tok = model.tokenizer
    prompt = "The war lasted from the"
    assert token_in_context(tok, "year", prompt) == tok.encode(" year")[0]
    assert token_in_context(tok, " year", prompt) == tok.encode(" year")[0]
    assert token_in_context(tok, "32", "... from the year 17") == tok.encode("32")[0]  # digits continue
    with pytest.raises(ValueError, match="not a single token"):
        token_in_context(tok, "year war", prompt)
    logits = model(prompt)[0, -1].detach()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the meant token (p ~ 1) gives no warning
        (t,) = resolve_targets(["year"], logits, max_n_logits=5, desired_logit_prob=0.9, tokenizer=tok, prompt=prompt)
    assert t.token_id == tok.encode(" year")[0] and t.weight > 0.9
    bare = tok.encode("year")[0]  # the same word without its space: negligible here
    with pytest.warns(UserWarning, match=r"probability .* likely intended token is ' year'"):
        resolve_targets([bare], logits, max_n_logits=5, desired_logit_prob=0.9, tokenizer=tok)


# ----------------------------------------------------------------------------- organism loop
@pytest.fixture(scope="module")
def organism_graph(tmp_path_factory):
    """``tc-circuits attribute`` on the organism with the plain transcoders (greater-than target)."""
    out = tmp_path_factory.mktemp("org_graph")
    csv = out / "features.csv"
    rc = main(["attribute", "--prompt", GT_PROMPT, "--out", str(out / "g"), "--transcoders", "transcoder",
               "--target-direction", "greater-than", "--csv", str(csv), "--no-progress", "--top", "5"])
    assert rc == 0
    return out / "g", csv


def test_attribute_cli_equals_api_and_records_provenance(organism_graph, capsys):
    from tc_circuits.attribution import attribute
    from tc_circuits.cli.attribute import AttributeOptions, build_targets

    gdir, csv = organism_graph
    g = AttributionGraph.load(gdir)
    meta = g.metadata
    assert meta["sources"] == {"model": "organism", "transcoders": "transcoder", "dtype": "float32"}
    assert meta["model"]["model_name"] == "tc-circuits/organism" and len(meta["model"]["config_hash"]) == 16
    assert g.target_labels == ["P(YY>32) - P(YY<=32)"]  # the label carries the threshold year
    model, tcs, _ = resolve(ModelOptions(transcoders="transcoder"))
    for L, tc in tcs.items():
        assert meta["transcoders"][str(L)]["content_hash"] == transcoder_hash(tc)
    # the same graph from Python
    opts = AttributeOptions(prompt=GT_PROMPT, out="-", target_direction="greater-than")
    ref = attribute(model, tcs, GT_PROMPT, targets=build_targets(model, opts), progress=False)
    assert torch.equal(ref.edge_weight, g.edge_weight)
    assert torch.allclose(ref.nodes.value, g.nodes.value, rtol=0, atol=0, equal_nan=True)
    # the CSV is graph.features(), strongest first
    table = pd.read_csv(csv, keep_default_na=False)
    api = ref.features(model=model, transcoders=tcs)
    assert list(table.columns) == list(api.columns)
    assert table["id"].tolist() == api["id"].tolist()
    assert table["influence"].to_numpy() == pytest.approx(api["influence"].to_numpy(), rel=1e-6, abs=1e-12)
    assert (table["influence"].diff().dropna() <= 1e-12).all()


def test_feature_table_direct_effects_equal_frozen_ablations(organism_graph):
    """Independent check: each feature's direct-effect column equals minus the target change when
    that feature alone is ablated in the frozen model with other features held."""
    from tc_circuits.interventions import graph_targets, intervene

    gdir, _ = organism_graph
    g = AttributionGraph.load(gdir)
    model, tcs, _ = resolve_for_graph(g)
    table = g.features(model=model, transcoders=tcs, top=4)
    (label, pos, d), = graph_targets(g)
    col = f"effect[{label}]"
    assert {"layer", "position", "token", "latent", "activation", "influence", col, "promoted", "label"} <= set(table.columns)
    clean = float(intervene(model, tcs, g.prompt_tokens).logits[pos].double() @ d.double())
    for _, row in table.iterrows():
        ablated = intervene(model, tcs, g.prompt_tokens, [(int(row.layer), int(row.position), int(row.latent), 0.0)],
                            recompute_features=False)
        change = float(ablated.logits[pos].double() @ d.double()) - clean
        assert change == pytest.approx(-row[col], rel=1e-3, abs=1e-5)
        assert row.token == g.prompt_strings[int(row.position)]


def test_intervene_cli_frozen_live_and_api_agree(organism_graph, capsys):
    from tc_circuits.cli.intervene import InterveneOptions, intervene_graph

    gdir, csv = organism_graph
    top = pd.read_csv(csv, keep_default_na=False).head(2)
    specs = [f"L{r.layer}:{r.latent}@{r.position}" for r in top.itertuples()]
    steer = f"L{top.layer[0]}:{top.latent[0]}@{top.position[0] - len(AttributionGraph.load(gdir).prompt_strings)}=3.5"
    rc, out, err = run_cli(["intervene", str(gdir), "--ablate", *specs, "--no-recompute-features", "--json"], capsys)
    assert rc == 0, err
    (cli_res,) = json.loads(out)
    # held features, frozen model: the graph's direct edges predict the change exactly
    assert cli_res["frozen_change"] == pytest.approx(cli_res["direct"], rel=1e-3, abs=1e-5)
    assert cli_res["live_change"] != cli_res["frozen_change"]
    (api,) = intervene_graph(str(gdir), InterveneOptions(ablate=tuple(specs), recompute_features=False))
    assert api.frozen == pytest.approx(cli_res["frozen"], abs=1e-9) and api.live == pytest.approx(cli_res["live"], abs=1e-9)
    # steering (negative position) prints a table
    rc, out, err = run_cli(["intervene", str(gdir), "--steer", steer], capsys)
    assert rc == 0, err
    assert "Δ frozen" in out and "P(YY>32)" in out
    # bad specs are clear errors
    rc, _, err = run_cli(["intervene", str(gdir), "--ablate", "0:5"], capsys)
    assert rc == 2 and "expected L<layer>:<latent>@<pos>" in err


def test_mismatched_dictionaries_refused_recorded_ones_found(organism_graph, tmp_path, capsys):
    gdir, _ = organism_graph
    rc, _, err = run_cli(["intervene", str(gdir), "--ablate", "L0:1@3", "--transcoders", "skip_transcoder"], capsys)
    assert rc == 2 and "not the ones the graph was computed with" in err and "skip transcoder" in err
    rc, _, err = run_cli(["view", str(gdir), "--out", str(tmp_path / "p.html"), "--transcoders", "skip_transcoder"],
                         capsys)
    assert rc == 2 and "not the ones the graph was computed with" in err
    # without recorded sources the shipped dictionaries are matched by content hash
    g = AttributionGraph.load(gdir)
    del g.metadata["sources"]
    _, tcs, sources = resolve_for_graph(g)
    assert sources["transcoders"] == "transcoder" and not tcs[0].cfg.skip


def test_view_defaults_to_the_recorded_dictionaries(organism_graph, tmp_path, capsys):
    gdir, _ = organism_graph
    out = tmp_path / "page.html"
    rc, text, err = run_cli(["view", str(gdir), "--out", str(out), "--no-corpus", "--no-progress"], capsys)
    assert rc == 0, err
    assert text.strip() == str(out.resolve()) and "feature-" in out.read_text()


def test_evaluate_cli_equals_api(tmp_path, capsys):
    from tc_circuits.cli.data import DataOptions, eval_batches
    from tc_circuits.evaluation.evaluate import evaluate_reconstruction, evaluate_splice

    rc, out, err = run_cli(["evaluate", "--transcoders", "transcoder", "--sequences", "4", "--seq-len", "32",
                            "--out-dir", str(tmp_path), "--task", "greater-than", "--no-progress"], capsys)
    assert rc == 0, err
    assert "| all |" in out and "greater-than" in out
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert (tmp_path / "evaluation.md").read_text().strip() == out.split("\njson:")[0].strip()
    model, tcs, _ = resolve(ModelOptions(transcoders="transcoder"))
    batches = eval_batches(model, DataOptions(seq_len=32), is_organism=True, seed=12345, sequences=4)
    recon = evaluate_reconstruction(model, tcs, batches, start_pos=1)
    splice = evaluate_splice(model, tcs, batches)
    rows = {r["layers"]: r for r in saved["rows"]}
    for L in range(3):
        assert rows[str(L)]["fvu"] == pytest.approx(recon[L].fvu, rel=1e-6)
        assert rows[str(L)]["l0"] == pytest.approx(recon[L].l0, rel=1e-6)
        assert rows[str(L)]["dead_fraction"] == recon[L].dead_fraction
        assert rows[str(L)]["delta_ce"] == pytest.approx(splice.get(L).delta_ce, rel=1e-6, abs=1e-9)
    assert rows["all"]["kl"] == pytest.approx(splice.get((0, 1, 2)).kl, rel=1e-6)
    task = saved["task"]
    assert task["spliced_with_error"] == pytest.approx(task["original"], abs=1e-4)  # error term restores the model


def test_impossible_budget_warned_and_strict_refused(tmp_path, capsys):
    base = ["train", "--n-latents", "64", "--k", "4", "--batch-size", "512", "--total-tokens", "2048",
            "--buffer-tokens", "1024", "--layers", "1", "--seq-len", "32", "--out-dir", str(tmp_path), "--no-progress"]
    rc, _, err = run_cli([*base, "--strict"], capsys)  # default warm-up 50 > 4 steps, dead window 200k > 2k tokens
    assert rc == 2 and "warm-up (50 steps)" in err and "dead-latent window (200000 tokens)" in err
    assert not (tmp_path / "transcoders").exists()  # refused before any work
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        rc, out, err = run_cli([*base, "--eval-sequences", "4"], capsys)
    assert rc == 0
    assert "warning: training budget: the warm-up (50 steps)" in err and "dead-latent window" in err
    assert "held-out evaluation:" in out and "| 1 | skip_transcoder |" in out
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["rows"][0]["layers"] == "1" and 0 < saved["rows"][0]["fvu"]


# ----------------------------------------------------------------------------- second model
def test_loop_on_a_gpt2_shaped_folder(gpt2_dirs, gpt2_trained, tmp_path, capsys):
    model_dir, data_dir = gpt2_dirs
    run_dir, train_out = gpt2_trained
    assert "held-out evaluation:" in train_out and "| 1 | transcoder |" in train_out
    tcs_dir = run_dir / "transcoders"
    trained_eval = json.loads((run_dir / "evaluation.json").read_text())

    # evaluate: the same held-out rows give the same numbers as the end-of-training evaluation
    rc, out, err = run_cli(["evaluate", "--model", str(model_dir), "--transcoders", str(tcs_dir), "--dataset",
                            str(data_dir), "--seq-len", "32", "--sequences", "8", "--out-dir", str(tmp_path / "ev"),
                            "--no-progress"], capsys)
    assert rc == 0, err
    ev = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert [r["layers"] for r in ev["rows"]] == [r["layers"] for r in trained_eval["rows"]] == ["0", "1", "all"]
    for a, b in zip(ev["rows"], trained_eval["rows"]):
        assert a["delta_ce"] == pytest.approx(b["delta_ce"], rel=1e-5, abs=1e-7)
        if a["layers"] != "all":
            assert a["fvu"] == pytest.approx(b["fvu"], rel=1e-5, abs=1e-7) and 0 < a["fvu"] < 1.5

    # attribute with a logit difference named as the user means it (no leading spaces typed)
    prompt = "The war lasted from the"
    gdir = tmp_path / "g"
    with warnings.catch_warnings(record=True):
        rc, out, err = run_cli(["attribute", "--model", str(model_dir), "--transcoders", str(tcs_dir), "--prompt",
                                prompt, "--out", str(gdir), "--target-direction", "logit-diff", "--diff-tokens",
                                "year", "library", "--no-progress", "--csv", str(tmp_path / "f.csv"),
                                "--dtype", "float64"], capsys)
    assert rc == 0, err
    g = AttributionGraph.load(gdir)
    assert g.target_labels == ["logit ' year' - ' library'"]
    assert g.metadata["sources"]["model"] == str(model_dir.resolve()) and g.metadata["sources"]["dtype"] == "float64"
    assert pd.read_csv(tmp_path / "f.csv").shape[0] == int(g.mask_of("feature").sum())

    # intervene and view with the recorded model, dictionaries and dtype (float32 ones are refused)
    rc, _, err = run_cli(["intervene", str(gdir), "--ablate", "L0:1@1", "--dtype", "float32"], capsys)
    assert rc == 2 and "content hash" in err
    f = pd.read_csv(tmp_path / "f.csv").iloc[0]
    rc, out, err = run_cli(["intervene", str(gdir), "--ablate", f"L{f.layer}:{f.latent}@{f.position}", "--json",
                            "--no-recompute-features"], capsys)
    assert rc == 0, err
    (res,) = json.loads(out)
    assert res["frozen_change"] == pytest.approx(-f[f"effect[{g.target_labels[0]}]"], rel=1e-3, abs=1e-6)
    rc, out, err = run_cli(["view", str(gdir), "--out", str(tmp_path / "v.html"), "--no-progress"], capsys)
    assert rc == 0, err
    assert (tmp_path / "v.html").is_file()

    # another model's dictionaries are refused
    rc, _, err = run_cli(["intervene", str(gdir), "--ablate", "L0:1@1", "--model", "organism",
                          "--transcoders", "transcoder"], capsys)
    assert rc == 2 and "different model" in err


def test_unknown_model_and_dictionaries_are_clear_errors(tmp_path, capsys):
    rc, _, err = run_cli(["evaluate", "--transcoders", str(tmp_path / "nope"), "--no-progress"], capsys)
    assert rc == 2 and "no such folder" in err
    rc, _, err = run_cli(["evaluate", "--model", str(tmp_path), "--no-progress"], capsys)
    assert rc == 2 and "needs --transcoders" in err
    rc, _, err = run_cli(["evaluate", "--model", str(tmp_path), "--transcoders", "x", "--no-progress"], capsys)
    assert rc == 2 and "not a Hugging Face model folder" in err
    with pytest.raises(ValueError, match="--device must be cpu, cuda or mps"):
        ModelOptions(device="tpu")


def test_compare_and_demo_on_a_gpt2_shaped_folder(gpt2_dirs, gpt2_trained, tmp_path, capsys):
    model_dir, data_dir = gpt2_dirs
    run_dir, _ = gpt2_trained
    rc, out, err = run_cli(["compare", "--model", str(model_dir), "--dataset", str(data_dir), "--layers", "0",
                            "--n-latents", "32", "--k", "4", "--k-sweep", "4", "--total-tokens", "1024",
                            "--batch-size", "256", "--buffer-tokens", "512", "--warmup-steps", "0", "--seq-len", "32",
                            "--rows-per-batch", "8", "--eval-tokens", "256", "--out-dir", str(tmp_path / "cmp"),
                            "--no-progress"], capsys)
    assert rc == 0, err
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert {r["kind"] for r in saved["rows"]} == {"sae", "transcoder", "skip_transcoder"}
    rc, out, err = run_cli(["demo", "--model", str(model_dir), "--transcoders", str(run_dir / "transcoders"),
                            "--out", str(tmp_path / "demo"), "--eval-sequences", "4", "--no-progress",
                            "--top-features", "3"], capsys)
    assert rc == 0, err
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["graph"]["exactness_error"] < 1e-3 and len(summary["graph"]["top_features"]) == 3
    g = AttributionGraph.load(tmp_path / "demo" / "graph")
    assert g.metadata["sources"]["transcoders"] == str((run_dir / "transcoders").resolve())


def test_budget_problems_each_condition():
    from tc_circuits.training.config import TrainConfig

    ok = TrainConfig(batch_size=1000, total_tokens=1_000_000, warmup_steps=50, dead_tokens_threshold=200_000,
                     buffer_tokens=32_768, log_every=10)
    assert ok.budget_problems() == [] and ok.check_budget() == []
    cases = {
        "warm-up (1000 steps) is not shorter than the run (1000 steps": dict(warmup_steps=1000),
        "dead-latent window (2000000 tokens)": dict(dead_tokens_threshold=2_000_000),
        "overlap in a run of 1000 steps": dict(warmup_steps=900, decay_fraction=0.2),
        "rounds to no decay steps; the schedule assumes at least 2000 steps": dict(decay_fraction=0.0005),
        "log_every=2000 is longer than the run": dict(log_every=2000),
        "one buffer fill (2000000 tokens)": dict(buffer_tokens=2_000_000),
    }
    for text, change in cases.items():
        cfg = ok.replace(**change)
        problems = cfg.budget_problems()
        assert len(problems) == 1 and text in problems[0], (change, problems)
        with pytest.warns(UserWarning, match="training budget"):
            cfg.check_budget()
        with pytest.raises(ValueError, match="strict"):
            cfg.replace(strict=True).check_budget()


def test_cross_layer_train_then_attribute_and_evaluate(gpt2_dirs, tmp_path, capsys):
    """``train --cross-layer`` writes a CLT that ``attribute`` and ``evaluate`` take by folder."""
    from tc_circuits.coders.clt import CrossLayerTranscoder

    model_dir, data_dir = gpt2_dirs
    run_dir = tmp_path / "clt_run"
    base = ["train", "--model", str(model_dir), "--dataset", str(data_dir), "--seq-len", "32", "--n-latents", "32",
            "--k", "4", "--batch-size", "256", "--total-tokens", "4096", "--buffer-tokens", "512", "--warmup-steps",
            "2", "--lr", "1e-3", "--dead-tokens-threshold", "1024", "--log-every", "4", "--no-progress",
            "--out-dir", str(run_dir)]
    for extra, message in [(["--resume"], "--resume"), (["--kind", "sae"], "--kind sae"),
                           (["--layers", "1"], "drop --layers 1")]:
        rc, _, err = run_cli([*base, "--cross-layer", *extra], capsys)
        assert rc == 2 and message in err, err
    assert not (run_dir / "clt").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc, out, err = run_cli([*base, "--cross-layer", "--eval-sequences", "8"], capsys)
    assert rc == 0, err
    assert "cross-layer transcoder written to" in out and "held-out evaluation:" in out
    clt = CrossLayerTranscoder.load(run_dir / "clt")
    assert clt.cfg.n_layers == 2 and clt.cfg.k == 4 and clt.cfg.skip
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["kind"] == "cross_layer_transcoder" and 0 < metrics["layers"]["1"]["fvu"] < 0.5
    rc, _, err = run_cli([*base, "--cross-layer"], capsys)  # the folder holds a run now
    assert rc == 2 and "already holds a training run" in err

    # the CLT is named by its folder everywhere: an exact graph, and the same held-out numbers
    gdir = tmp_path / "g"
    rc, out, err = run_cli(["attribute", "--model", str(model_dir), "--transcoders", str(run_dir / "clt"),
                            "--prompt", "The war lasted from the", "--out", str(gdir), "--no-progress",
                            "--dtype", "float64"], capsys)
    assert rc == 0, err
    g = AttributionGraph.load(gdir)
    rows = g.nodes.expanded.nonzero().squeeze(1)
    sums = torch.zeros(len(g.nodes), dtype=torch.float64).index_add_(0, g.edge_target, g.edge_weight.double())
    assert torch.allclose(sums[rows], g.nodes.value[rows].double(), rtol=1e-9, atol=1e-9)
    f = int(g.indices_of("feature")[0])
    spec = f"L{int(g.nodes.layer[f])}:{int(g.nodes.latent[f])}@{int(g.nodes.pos[f])}"
    rc, out, err = run_cli(["intervene", str(gdir), "--ablate", spec, "--json"], capsys)  # recorded CLT found
    assert rc == 0, err
    rc, out, err = run_cli(["view", str(gdir), "--out", str(tmp_path / "v.html"), "--no-progress"], capsys)
    assert rc == 0 and (tmp_path / "v.html").is_file(), err
    rc, out, err = run_cli(["evaluate", "--model", str(model_dir), "--transcoders", str(run_dir / "clt"), "--dataset",
                            str(data_dir), "--seq-len", "32", "--sequences", "8", "--out-dir", str(tmp_path / "ev"),
                            "--no-progress"], capsys)
    assert rc == 0, err
    ev = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    trained = json.loads((run_dir / "evaluation.json").read_text())
    for a, b in zip(ev["rows"], trained["rows"]):
        assert a["delta_ce"] == pytest.approx(b["delta_ce"], rel=1e-5, abs=1e-7)
