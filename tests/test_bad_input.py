"""Bad input, hostile files and faults: every case is a clear error, nothing is lost, nothing silent.

``CASES`` is the table of issue 19: input -> expected exception type + message fragment, each
raised before any long work. ``WARN_CASES`` are inputs that run but must say what happened.
``CLI_CASES`` run the command line (exit code 2 + one line naming the problem). The fault
injection tests at the end (kill -9 during checkpoint writes, a full disk, SIGTERM / SIGINT
during training, KeyboardInterrupt at every hook registration of splice / intervene /
attribute) check that nothing on disk is lost or corrupted and that no hook is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from attribution_helpers import make_model64, make_transcoders
from conftest import make_tiny_model
from safetensors.torch import save_file

import tc_circuits.validate as validate
from tc_circuits.attribution import engine
from tc_circuits.attribution.engine import AttributionExactnessError, AttributionMemoryError, attribute
from tc_circuits.attribution.linearise import LinearisedModel
from tc_circuits.attribution.targets import Target
from tc_circuits.coders.transcoder import Transcoder
from tc_circuits.evaluation.splice import count_hooks, splice
from tc_circuits.graph.graph import AttributionGraph
from tc_circuits.interventions import intervene
from tc_circuits.training import checkpoint as ckpt
from tc_circuits.training.config import TrainConfig
from tc_circuits.training.guard import OutDirInUse, OutDirLock, TrainingDivergedError, TrainingInterrupted
from tc_circuits.training.trainer import Trainer, train_transcoders
from tc_circuits.validate import ChecksumError, NonFiniteError

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(layers=(0,), kind="transcoder", n_latents=32, k=4, batch_size=64, buffer_tokens=256,
             total_tokens=64 * 8, lr=1e-2, warmup_steps=0, log_every=2, dead_tokens_threshold=10_000)


def _tokens(n: int = 64, seq: int = 16):
    return torch.randint(0, 50, (n, seq), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def organism():
    from tc_circuits.organism import load_organism, load_organism_transcoders

    model = load_organism()
    return model, load_organism_transcoders("skip_transcoder", model=model)


@pytest.fixture(scope="module")
def tiny():
    model = make_tiny_model()
    return model, make_transcoders(model)


def _toks(n: int = 8):
    return torch.randint(0, 50, (n,), generator=torch.Generator().manual_seed(0))


def _nan_tc(tcs, layer=0, name="W_dec"):
    bad = {L: tc for L, tc in tcs.items()}
    tc = Transcoder(bad[layer].cfg)
    tc.load_tensors(bad[layer].state_tensors())
    with torch.no_grad():
        getattr(tc, name).view(-1)[3] = float("nan")
    bad[layer] = tc
    return bad


def _saved_tc(tmp_path, tiny, edit_cfg=None, edit_tensors=None, rehash=True) -> Path:
    model, tcs = tiny
    path = tcs[0].save(tmp_path / "tc")
    if edit_cfg:
        cfg = json.loads((path / "cfg.json").read_text())
        edit_cfg(cfg)
        (path / "cfg.json").write_text(json.dumps(cfg))
    if edit_tensors:
        t = {k: v.clone() for k, v in tcs[0].state_tensors().items()}
        edit_tensors(t)
        meta = {validate.CHECKSUM_KEY: validate.tensors_digest(t)} if rehash else {}
        save_file(t, str(path / "weights.safetensors"), metadata=meta)
    return path


def _flip_bit(file: Path, offset_from_end: int = 7) -> None:
    data = bytearray(file.read_bytes())
    data[-offset_from_end] ^= 0x40  # an exponent bit of some float
    file.write_bytes(bytes(data))


def _graph(tiny) -> AttributionGraph:
    model, tcs = tiny
    return attribute(model, tcs, _toks(), progress=False)


def _saved_graph(tmp_path, tiny) -> Path:
    return _graph(tiny).save(tmp_path / "g")


def _checkpoint(tmp_path) -> Path:
    out = tmp_path / "run"
    train_transcoders(make_tiny_model(), _tokens(), TrainConfig(**SMALL, checkpoint_every=2, out_dir=str(out)), progress=False)
    return out


def _write_ct(tmp_path, tiny, entry) -> Path:
    from tc_circuits.formats.circuit_tracer import save_circuit_tracer

    model, tcs = tiny
    root = tmp_path / "ct"
    save_circuit_tracer({0: tcs[0]}, root, model_name="tiny-test", allow_topk=True)
    raw = yaml.safe_load((root / "config.yaml").read_text())
    raw["transcoders"] = [entry]
    (root / "config.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "outside").mkdir(exist_ok=True)  # the layer file lives outside the folder only
    os.replace(root / Path(entry).name, tmp_path / "outside" / Path(entry).name)
    return root


def _saelens(tmp_path, tiny, **changes) -> Path:
    from tc_circuits.formats.saelens import save_saelens

    model = tiny[0]
    sae = make_transcoders(model, activation="relu", skip=False, layers=[0])
    root = save_saelens(sae[0], tmp_path / "sl")
    cfg = json.loads((root / "cfg.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (root / "cfg.json").write_text(json.dumps(cfg))
    return root


def _long_text(n: int = 1100) -> str:
    return " the war" * n


# ----------------------------------------------------------------------------- the table
def _case_prompt_too_long_attribute(tmp_path, tiny, org):
    attribute(*org, _long_text(), progress=False)


def _case_prompt_too_long_intervene(tmp_path, tiny, org):
    intervene(*org, _long_text())


def _case_token_ids_too_long(tmp_path, tiny, org):
    attribute(*tiny, torch.zeros(17, dtype=torch.long), progress=False)


def _case_float_token_ids(tmp_path, tiny, org):
    attribute(*tiny, torch.tensor([1.0, 2.7, 3.0]), progress=False)


def _case_nan_transcoder_attribute(tmp_path, tiny, org):
    attribute(tiny[0], _nan_tc(tiny[1]), _toks(), progress=False)


def _case_inf_transcoder_splice(tmp_path, tiny, org):
    bad = _nan_tc(tiny[1], name="W_enc")
    with torch.no_grad():
        bad[0].W_enc.view(-1)[3] = float("inf")
    with splice(tiny[0], bad):
        pass


def _case_nan_transcoder_intervene(tmp_path, tiny, org):
    intervene(tiny[0], _nan_tc(tiny[1], name="b_dec"), _toks())


def _case_nan_target_direction(tmp_path, tiny, org):
    d = torch.zeros(50)
    d[3] = float("nan")
    attribute(*tiny, _toks(), targets=[Target(d)], progress=False)


def _case_nan_intervention_value(tmp_path, tiny, org):
    intervene(*tiny, _toks(), [(0, 1, 2, float("nan"))])


def _case_float_intervention_position(tmp_path, tiny, org):
    intervene(*tiny, _toks(), [(0, 1.5, 2, 0.0)])


def _case_nan_in_weights_file(tmp_path, tiny, org):
    def poison(t):
        t["W_dec"][0, 0] = float("nan")

    Transcoder.load(_saved_tc(tmp_path, tiny, edit_tensors=poison))


def _case_exactness_nan_fails(tmp_path, tiny, org):
    orig = engine.exactness_deviation
    engine.exactness_deviation = lambda g, sums=None: (float("nan"), float("nan"))
    try:
        attribute(*tiny, _toks(), progress=False)
    finally:
        engine.exactness_deviation = orig


def _scaled_skip(model, tcs, factor=1.001):
    orig = LinearisedModel.__init__

    def init(self, *a, **k):
        orig(self, *a, **k)
        with torch.no_grad():  # the skip path the transposed pass uses, scaled after the forward
            for tc in self.transcoders.values():
                tc.W_skip.mul_(factor)

    LinearisedModel.__init__ = init
    try:
        attribute(model, tcs, _toks(12), progress=False)
    finally:
        LinearisedModel.__init__ = orig


def _case_skip_scaled_float32(tmp_path, tiny, org):
    model = make_tiny_model(seed=1)
    _scaled_skip(model, make_transcoders(model, seed=1))


def _case_skip_scaled_float64(tmp_path, tiny, org):
    model = make_model64(seed=1)
    _scaled_skip(model, make_transcoders(model, seed=1), factor=1 + 1e-6)


def _case_resume_truncated_state(tmp_path, tiny, org):
    out = _checkpoint(tmp_path)
    state = out / "checkpoint" / "state.json"
    state.write_text(state.read_text()[:40])
    Trainer(make_tiny_model(), _tokens(), TrainConfig(**SMALL, checkpoint_every=2, out_dir=str(out)), resume=True, progress=False)


def _case_resume_incomplete_state(tmp_path, tiny, org):
    out = _checkpoint(tmp_path)
    state = out / "checkpoint" / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "complete": False}))
    Trainer(make_tiny_model(), _tokens(), TrainConfig(**SMALL, checkpoint_every=2, out_dir=str(out)), resume=True, progress=False)


def _case_folder_holds_other_run(tmp_path, tiny, org):
    out = _checkpoint(tmp_path)
    Trainer(make_tiny_model(), _tokens(), TrainConfig(**SMALL, out_dir=str(out)), progress=False)


def _case_folder_locked(tmp_path, tiny, org):
    out = tmp_path / "locked"
    out.mkdir()
    lock = OutDirLock(out)
    try:
        Trainer(make_tiny_model(), _tokens(), TrainConfig(**SMALL, out_dir=str(out)), progress=False)
    finally:
        lock.release()


def _case_ct_parent_path(tmp_path, tiny, org):
    from tc_circuits.formats.circuit_tracer import load_circuit_tracer

    load_circuit_tracer(_write_ct(tmp_path, tiny, "../outside/layer_0.safetensors"))


def _case_ct_absolute_path(tmp_path, tiny, org):
    from tc_circuits.formats.circuit_tracer import load_circuit_tracer

    load_circuit_tracer(_write_ct(tmp_path, tiny, str(tmp_path / "outside" / "layer_0.safetensors")))


def _case_cfg_skip_string(tmp_path, tiny, org):
    Transcoder.load(_saved_tc(tmp_path, tiny, edit_cfg=lambda c: c.update(skip="no")))


def _case_cfg_processing_string(tmp_path, tiny, org):
    Transcoder.load(_saved_tc(tmp_path, tiny, edit_cfg=lambda c: c.update(weight_processing={"fold_ln": "false"})))


def _case_foreign_processing_string(tmp_path, tiny, org):
    from tc_circuits.formats._common import processing_from

    processing_from({"fold_ln": "false"})


def _case_cfg_k_float(tmp_path, tiny, org):
    Transcoder.load(_saved_tc(tmp_path, tiny, edit_cfg=lambda c: c.update(k=4.0)))


def _case_int64_bias(tmp_path, tiny, org):
    def to_int(t):
        t["b_enc"] = t["b_enc"].round().long()

    Transcoder.load(_saved_tc(tmp_path, tiny, edit_tensors=to_int))


def _case_bit_flip_weights(tmp_path, tiny, org):
    path = _saved_tc(tmp_path, tiny)
    _flip_bit(path / "weights.safetensors")
    Transcoder.load(path)


def _case_bit_flip_graph(tmp_path, tiny, org):
    path = _saved_graph(tmp_path, tiny)
    _flip_bit(path / "graph.safetensors")
    AttributionGraph.load(path)


def _case_edited_graph_json(tmp_path, tiny, org):
    path = _saved_graph(tmp_path, tiny)
    meta = json.loads((path / "graph.json").read_text())
    meta["target_labels"] = ["something else"] * len(meta["target_labels"])
    (path / "graph.json").write_text(json.dumps(meta, indent=1))
    AttributionGraph.load(path)


def _case_bit_flip_train_state(tmp_path, tiny, org):
    out = _checkpoint(tmp_path)
    _flip_bit(out / "checkpoint" / "train_state.safetensors", 3)
    ckpt.load_checkpoint(out / "checkpoint")


def _case_lr_inf(tmp_path, tiny, org):
    TrainConfig(**{**SMALL, "lr": float("inf")})


def _case_grad_clip_inf(tmp_path, tiny, org):
    TrainConfig(**{**SMALL, "grad_clip": float("inf")})


def _case_lr_diverges(tmp_path, tiny, org):
    out = tmp_path / "div"
    try:
        train_transcoders(make_tiny_model(), _tokens(), TrainConfig(**{**SMALL, "lr": 1e30, "grad_clip": None},
                          checkpoint_every=1, out_dir=str(out)), progress=False)
    finally:  # nothing non-finite on disk
        for f in out.rglob("*.safetensors"):
            for name, t in validate.load_safetensors(f).items():
                assert not t.is_floating_point() or bool(torch.isfinite(t).all()), (f, name)


def _case_memory_budget(tmp_path, tiny, org):
    attribute(*tiny, _toks(), progress=False, max_memory=1e-6)


def _case_out_dir_is_file(tmp_path, tiny, org):
    f = tmp_path / "file"
    f.write_text("x")
    Trainer(make_tiny_model(), _tokens(), TrainConfig(**SMALL, out_dir=str(f)), progress=False)


def _case_out_dir_read_only(tmp_path, tiny, org):
    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    validate.open = denied  # what a read-only file system answers (root ignores chmod)
    try:
        Trainer(make_tiny_model(), _tokens(), TrainConfig(**SMALL, out_dir=str(tmp_path / "ro")), progress=False)
    finally:
        del validate.open


def _case_out_dir_full(tmp_path, tiny, org):
    import shutil

    real = shutil.disk_usage
    validate.shutil.disk_usage = lambda p: real(p)._replace(free=1000)
    try:
        Trainer(make_tiny_model(), _tokens(), TrainConfig(**SMALL, out_dir=str(tmp_path / "full")), progress=False)
    finally:
        validate.shutil.disk_usage = real


def _case_empty_graph_tensors(tmp_path, tiny, org):
    path = _saved_graph(tmp_path, tiny)
    (path / "graph.safetensors").write_bytes(b"")
    AttributionGraph.load(path)


def _case_truncated_graph_tensors(tmp_path, tiny, org):
    path = _saved_graph(tmp_path, tiny)
    data = (path / "graph.safetensors").read_bytes()
    (path / "graph.safetensors").write_bytes(data[: len(data) // 2])
    AttributionGraph.load(path)


def _case_truncated_train_state(tmp_path, tiny, org):
    out = _checkpoint(tmp_path)
    f = out / "checkpoint" / "train_state.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    ckpt.load_checkpoint(out / "checkpoint")


def _case_graph_json_missing_keys(tmp_path, tiny, org):
    path = _saved_graph(tmp_path, tiny)
    meta = json.loads((path / "graph.json").read_text())
    del meta["target_labels"], meta["prompt_strings"]
    (path / "graph.json").write_text(json.dumps(meta))
    AttributionGraph.load(path)


def _case_negative_edge_index(tmp_path, tiny, org):
    g = _graph(tiny)
    et = g.edge_target.clone()
    et[0] = -3
    AttributionGraph(g.nodes, et, g.edge_source, g.edge_weight, g.target_weights, g.target_labels,
                     g.prompt_tokens, g.prompt_strings)


def _case_neuronpedia_missing_ctx_idx(tmp_path, tiny, org):
    from tc_circuits.graph.export import load_json, to_json_dict

    data = to_json_dict(_graph(tiny))
    for node in data["nodes"]:  # a foreign (circuit-tracer) file: no tc_* fields, no ctx_idx
        for key in [k for k in node if k.startswith("tc_")] + ["ctx_idx"]:
            node.pop(key, None)
    f = tmp_path / "foreign.json"
    f.write_text(json.dumps(data))
    load_json(f)


def _case_saelens_missing_field(tmp_path, tiny, org):
    from tc_circuits.formats.saelens import load_saelens

    load_saelens(_saelens(tmp_path, tiny, d_sae=None))


def _case_saelens_mistyped_field(tmp_path, tiny, org):
    from tc_circuits.formats.saelens import load_saelens

    load_saelens(_saelens(tmp_path, tiny, d_in="32"))


def _case_graph_json_file_not_folder(tmp_path, tiny, org):
    AttributionGraph.load(_saved_graph(tmp_path, tiny) / "graph.json")


def _case_demo_prompt_checked_first(tmp_path, tiny, org):
    import tc_circuits.evaluation.evaluate as ev
    from tc_circuits.demo import DemoConfig, run_demo

    orig = ev.evaluate_reconstruction
    ev.evaluate_reconstruction = lambda *a, **k: pytest.fail("the demo evaluated before checking its prompt")
    try:
        run_demo(DemoConfig(out=str(tmp_path / "demo"), prompt="not a greater-than prompt"), progress=False)
    finally:
        ev.evaluate_reconstruction = orig


CASES = [
    # (1) prompts longer than n_ctx: refused, never truncated
    ("prompt_too_long_attribute", _case_prompt_too_long_attribute, ValueError, "longer than the model's context n_ctx=1024"),
    ("prompt_too_long_intervene", _case_prompt_too_long_intervene, ValueError, "not truncated"),
    ("token_ids_too_long", _case_token_ids_too_long, ValueError, "17 tokens, longer than the model's context n_ctx=16"),
    ("float_token_ids", _case_float_token_ids, ValueError, "token ids must be integers, got dtype torch.float32"),
    # (2) NaN / inf
    ("nan_transcoder_attribute", _case_nan_transcoder_attribute, NonFiniteError, "transcoder for layer 0: tensor W_dec"),
    ("inf_transcoder_splice", _case_inf_transcoder_splice, NonFiniteError, "1 infinite"),
    ("nan_transcoder_intervene", _case_nan_transcoder_intervene, NonFiniteError, "tensor b_dec"),
    ("nan_target_direction", _case_nan_target_direction, ValueError, "direction holds NaN or infinite"),
    ("nan_intervention_value", _case_nan_intervention_value, ValueError, "value must be a finite number"),
    ("float_intervention_position", _case_float_intervention_position, ValueError, "layer, pos and latent must be integers"),
    ("nan_in_weights_file", _case_nan_in_weights_file, NonFiniteError, "weights.safetensors: tensor W_dec"),
    ("exactness_check_fails_on_nan", _case_exactness_nan_fails, AttributionExactnessError, "relative nan"),
    # (3) the tolerance is tight enough to catch a skip path off by 0.1% (1e-6 in float64)
    ("skip_scaled_1.001_float32", _case_skip_scaled_float32, AttributionExactnessError, "tol 1e-05"),
    ("skip_scaled_1e-6_float64", _case_skip_scaled_float64, AttributionExactnessError, "tol 1e-12"),
    # (5) resume / other runs / lock
    ("resume_truncated_state", _case_resume_truncated_state, ValueError, "truncated or not JSON"),
    ("resume_complete_false", _case_resume_incomplete_state, ValueError, "does not say complete=true"),
    ("folder_holds_other_run", _case_folder_holds_other_run, ValueError, "already holds a training run"),
    ("folder_locked", _case_folder_locked, OutDirInUse, "is in use by pid"),
    # (6) path traversal
    ("circuit_tracer_parent_path", _case_ct_parent_path, ValueError, "points outside"),
    ("circuit_tracer_absolute_path", _case_ct_absolute_path, ValueError, "points outside"),
    # (7) config types and checksums
    ("cfg_skip_string", _case_cfg_skip_string, ValueError, "skip must be true or false"),
    ("cfg_processing_string", _case_cfg_processing_string, ValueError, "weight_processing['fold_ln'] must be true or false"),
    ("foreign_processing_string", _case_foreign_processing_string, ValueError, "fold_ln must be true or false"),
    ("cfg_k_float", _case_cfg_k_float, ValueError, "k must be an integer, got 4.0"),
    ("int64_bias", _case_int64_bias, ValueError, "tensor b_enc has dtype torch.int64"),
    ("bit_flip_weights", _case_bit_flip_weights, ChecksumError, "fails its content check"),
    ("bit_flip_graph", _case_bit_flip_graph, ChecksumError, "graph.safetensors fails its content check"),
    ("edited_graph_json", _case_edited_graph_json, ChecksumError, "graph.json fails its content check"),
    ("bit_flip_train_state", _case_bit_flip_train_state, ChecksumError, "train_state.safetensors fails"),
    # (8) divergence
    ("lr_inf", _case_lr_inf, ValueError, "lr=inf must be a finite positive number"),
    ("grad_clip_inf", _case_grad_clip_inf, ValueError, "grad_clip=inf must be a finite"),
    ("lr_1e30_diverges", _case_lr_diverges, TrainingDivergedError, "training diverged"),
    # (9) memory guard
    ("memory_budget", _case_memory_budget, AttributionMemoryError, "max_feature_nodes=0"),
    # (10) out folder checked before training
    ("out_dir_is_a_file", _case_out_dir_is_file, NotADirectoryError, "exists and is not a folder"),
    ("out_dir_read_only", _case_out_dir_read_only, PermissionError, "is not writable: Permission denied"),
    ("out_dir_full", _case_out_dir_full, OSError, "MiB free; a checkpoint needs about"),
    # unclear errors made clear
    ("empty_graph_tensors", _case_empty_graph_tensors, ValueError, "graph tensors"),
    ("truncated_graph_tensors", _case_truncated_graph_tensors, ValueError, "corrupted or truncated"),
    ("truncated_train_state", _case_truncated_train_state, ValueError, "training state"),
    ("graph_json_missing_keys", _case_graph_json_missing_keys, ValueError, "missing keys ['target_labels', 'prompt_strings']"),
    ("negative_edge_index", _case_negative_edge_index, ValueError, "edge_target holds node index range [-3"),
    ("neuronpedia_missing_ctx_idx", _case_neuronpedia_missing_ctx_idx, ValueError, "'ctx_idx'"),
    ("saelens_missing_field", _case_saelens_missing_field, ValueError, "missing field 'd_sae'"),
    ("saelens_mistyped_field", _case_saelens_mistyped_field, ValueError, "d_in must be an integer, got '32'"),
    ("graph_json_file_not_folder", _case_graph_json_file_not_folder, ValueError, "pass its folder"),
    ("demo_prompt_checked_first", _case_demo_prompt_checked_first, ValueError, "greater-than prompt must end like"),
]


@pytest.mark.parametrize("case, expected, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(case, expected, fragment, tmp_path, tiny, organism):
    with pytest.raises(expected) as info:
        case(tmp_path, tiny, organism)
    assert fragment in str(info.value), str(info.value)
    assert all(count_hooks(m) == 0 for m in (tiny[0], organism[0]))


def test_refusals_come_before_the_work(tmp_path, tiny, monkeypatch):
    """Out-folder and memory refusals happen before a training step / a feature row."""
    monkeypatch.setattr(Trainer, "train_step", lambda *a: pytest.fail("trained before checking the folder"))
    _checkpoint_dir = tmp_path / "x"
    _checkpoint_dir.mkdir()
    (_checkpoint_dir / "transcoders").mkdir()
    with pytest.raises(ValueError, match="already holds"):
        train_transcoders(make_tiny_model(), _tokens(), TrainConfig(**SMALL, out_dir=str(_checkpoint_dir)), progress=False)
    monkeypatch.setattr(engine, "_compute_rows", lambda *a, **k: pytest.fail("computed rows before the memory check"))
    with pytest.raises(AttributionMemoryError, match="estimated to need"):
        attribute(*tiny, _toks(), progress=False, max_memory=1e-6)


def test_memory_estimate_bounds_the_edges_and_fits_by_batch(tiny):
    model, tcs = tiny
    from tc_circuits.attribution.memory import estimate_attribution_memory

    seen = {}
    orig = engine._fit_memory

    def spy(lin, tpos, mfn, batch_size, budget, max_memory):
        seen["est"] = estimate_attribution_memory(lin, tpos, lin.n_features, batch_size)[0]
        return orig(lin, tpos, mfn, batch_size, budget, max_memory)

    engine._fit_memory = spy
    try:
        g = attribute(model, tcs, _toks(12), progress=False)
        est = seen["est"]
        # an upper bound; tight on real full graphs (0.99-1.00 on the organism), looser on this toy
        assert g.n_edges <= est.edges <= 1.25 * g.n_edges
        budget_gb = (est.edge_bytes + est.cache_bytes + est.batch_bytes // 8) / 1e9
        with pytest.warns(UserWarning, match="batch_size 64 -> "):
            g2 = attribute(model, tcs, _toks(12), progress=False, max_memory=budget_gb)
    finally:
        engine._fit_memory = orig
    assert g2.n_edges == g.n_edges
    torch.testing.assert_close(g2.row_sums(), g.row_sums(), rtol=0, atol=1e-5)


def test_no_override_of_a_recorded_model_warning(tiny):
    model, tcs = tiny
    cfg = tcs[0].cfg.replace(model_name=None)
    tc = Transcoder(cfg)
    tc.load_tensors(tcs[0].state_tensors())
    with pytest.warns(UserWarning, match="records no model"):
        with splice(model, {0: tc}):
            pass
    assert count_hooks(model) == 0


WARN_CASES = [
    ("oov_prompt", lambda org: attribute(*org, " the war lasted zorblax from", progress=False, max_feature_nodes=4), "outside the tokenizer's vocabulary"),
    ("oov_target", lambda org: attribute(*org, " the war lasted from", targets=[" zorblax"], progress=False, max_feature_nodes=4), "target ' zorblax'"),
]


@pytest.mark.parametrize("run, fragment", [c[1:] for c in WARN_CASES], ids=[c[0] for c in WARN_CASES])
def test_unknown_tokens_are_warned(run, fragment, organism):
    with pytest.warns(UserWarning, match="became '<\\|unk\\|>'") as rec:
        run(organism)
    assert any(fragment in str(w.message) for w in rec)


def test_cli_errors_are_one_line(tmp_path, tiny, organism, monkeypatch, capsys):
    import tc_circuits.cli.resolve as cli_resolve
    from tc_circuits.cli import build_parser, main

    graph_dir = _saved_graph(tmp_path, tiny)
    args = build_parser().parse_args(["view", str(graph_dir), "--out", "x.html", "--no-progress"])
    assert args.progress is False
    monkeypatch.setattr(cli_resolve, "resolve", lambda *a, **k: (*organism, {"model": "organism", "transcoders": "shipped"}))
    cases = [
        (["attribute", "--prompt", "x", "--out", str(tmp_path / "o"), "--slug", "../../x"], "--slug '../../x' is not a safe file name"),
        (["attribute", "--prompt", _long_text(), "--out", str(tmp_path / "o2")], "longer than the model's context"),
        (["view", str(graph_dir / "graph.json"), "--out", str(tmp_path / "v.html")], "pass its folder"),
        (["train", "--out-dir", str(graph_dir / "graph.json"), "--n-latents", "32", "--k", "4"],
         "exists and is not a folder"),
    ]
    for argv, fragment in cases:
        capsys.readouterr()
        assert main(argv) == 2
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "Moving model" not in ln]
        assert len(lines) == 1 and lines[0].startswith(f"tc-circuits {argv[0]}: error: ") and fragment in lines[0], lines
    assert not (tmp_path / "o").exists() and not list(tmp_path.parent.glob("x.neuronpedia.json"))


# ----------------------------------------------------------------------------- fault injection
def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".tc_circuits.lock"}


def test_disk_full_during_checkpoint_keeps_previous_and_leaves_no_tmp(tmp_path, monkeypatch):
    import tc_circuits.coders.transcoder as tc_mod

    cfg = TrainConfig(**SMALL, checkpoint_every=2, out_dir=str(tmp_path))
    model = make_tiny_model()
    real = tc_mod.save_file
    calls = []

    def filling(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:  # the second checkpoint: the disk fills up half-way through the file
            with open(filename, "wb") as f:
                f.write(b"\x00" * 100)
            raise OSError(28, "No space left on device")
        real(tensors, filename, metadata=metadata)

    before = {}
    orig_save = ckpt.save_checkpoint

    def spy(out_dir, *a, **k):
        if not before and (Path(out_dir) / "checkpoint").exists():
            before.update(_all_files(Path(out_dir) / "checkpoint"))
        return orig_save(out_dir, *a, **k)

    monkeypatch.setattr(tc_mod, "save_file", filling)
    monkeypatch.setattr("tc_circuits.training.trainer.save_checkpoint", spy)
    with pytest.raises(OSError, match="cannot write a checkpoint into .*No space left on device"):
        train_transcoders(model, _tokens(), cfg, progress=False)
    assert before and _all_files(tmp_path / "checkpoint") == before  # the previous checkpoint, byte for byte
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / "checkpoint.tmp").exists()
    state, _ = ckpt.load_checkpoint(tmp_path / "checkpoint")
    assert state["step"] == 2
    monkeypatch.setattr(tc_mod, "save_file", real)
    resumed = train_transcoders(model, _tokens(), cfg, resume=True, progress=False)
    assert resumed.steps == 8


def test_sigint_writes_final_checkpoint_and_resume_is_bit_identical(tmp_path, monkeypatch):
    model = make_tiny_model()
    cfg = TrainConfig(**SMALL, checkpoint_every=100)
    full = train_transcoders(model, _tokens(), cfg.replace(out_dir=str(tmp_path / "full")), progress=False)
    original = Trainer.train_step

    def interrupted(self, batch):
        original(self, batch)
        if self.step == 5:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C mid-run: handled after the step completes

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    out = tmp_path / "cut"
    # the handler the process had (default_int_handler, or SIG_IGN in a job started in the background)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="SIGINT: training stopped at step 5/8; checkpoint written"):
        train_transcoders(model, _tokens(), cfg.replace(out_dir=str(out)), progress=False)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    monkeypatch.setattr(Trainer, "train_step", original)
    assert ckpt.load_checkpoint(out / "checkpoint")[0]["step"] == 5
    resumed = train_transcoders(model, _tokens(), cfg.replace(out_dir=str(out)), resume=True, progress=False)
    for L, tc in full.transcoders.items():
        for name, p in tc.named_parameters():
            assert torch.equal(p, dict(resumed.transcoders[L].named_parameters())[name]), name
    assert resumed.metrics == full.metrics


_TRAIN_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from conftest import make_tiny_model
    from tc_circuits.training.config import TrainConfig
    from tc_circuits.training.trainer import train_transcoders
    from tc_circuits.training.guard import TrainingInterrupted
    toks = torch.randint(0, 50, (64, 16), generator=torch.Generator().manual_seed(3))
    cfg = TrainConfig(layers=(0,), kind="transcoder", n_latents=32, k=4, batch_size=64, buffer_tokens=256,
                      total_tokens=64 * 200000, lr=1e-3, warmup_steps=0, log_every=2,
                      checkpoint_every={every}, out_dir=sys.argv[1])
    try:
        train_transcoders(make_tiny_model(), toks, cfg, progress=False, resume=True)
    except TrainingInterrupted as stop:
        print(stop, file=sys.stderr)
        sys.exit(130)
""")


def _start_training(out: Path, every: int) -> subprocess.Popen:
    script = out.parent / f"train_{every}.py"
    script.write_text(_TRAIN_SCRIPT.format(tests=str(REPO / "tests"), every=every))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(out)], env=env, stderr=subprocess.PIPE, text=True)


def _wait_for_step_after(out: Path, step: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    t0 = time.time()
    while True:
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t0 < timeout, "no new checkpoint"
        try:
            if json.loads((out / "checkpoint" / "state.json").read_text())["step"] > step:
                return
        except (OSError, ValueError, KeyError):  # mid-swap
            pass
        time.sleep(0.05)


def test_kill9_during_checkpoint_writes_and_sigterm_and_lock(tmp_path):
    """kill -9 of a run that checkpoints every step (so most likely inside a checkpoint write): a
    complete, hash-verified checkpoint survives. Another process gets the lock error while it
    runs. The next run resumes (never from step 0); SIGTERM makes it checkpoint and exit 130."""
    out = tmp_path / "run"
    steps = [0]
    for delay in (0.0,):
        proc = _start_training(out, every=1)
        _wait_for_step_after(out, steps[-1], proc)  # it resumed and wrote a newer checkpoint
        if delay == 0.0:  # while it runs, another process (this one) is refused at once
            with pytest.raises(OutDirInUse, match=f"in use by pid {proc.pid}"):
                OutDirLock(out)
        time.sleep(delay)
        proc.kill()  # kill -9, most likely inside one of the checkpoint writes (one per step)
        proc.wait()
        found = ckpt.resume_checkpoint(out)
        assert found is not None
        state, _ = ckpt.load_checkpoint(found)  # hash-checked
        Transcoder.load(found / "layer_0")  # hash-checked
        steps.append(state["step"])
    assert steps[-1] > 0
    proc = _start_training(out, every=0)
    lock = out / ".tc_circuits.lock"
    t0 = time.time()
    while time.time() - t0 < 120 and f"pid {proc.pid}" not in (lock.read_text() if lock.exists() else ""):
        time.sleep(0.05)
    time.sleep(1.0)  # training (resumed, no periodic checkpoints)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("SIGTERM: training stopped at step"), err
    state, _ = ckpt.load_checkpoint(out / "checkpoint")
    assert state["step"] > steps[-1] and f"step {state['step']}/" in lines[0]


def _interrupt_on_nth_registration(monkeypatch, n: int) -> list:
    """Patch torch's hook registration: the n-th call registers the hook, then raises."""
    from transformer_lens.hook_points import HookPoint

    calls = []
    real = HookPoint.register_forward_hook

    def register(self, *a, **k):
        handle = real(self, *a, **k)
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt("Ctrl-C between register_forward_hook and the handle being recorded")
        return handle

    monkeypatch.setattr(HookPoint, "register_forward_hook", register)
    return calls


def _torch_hooks(model) -> int:
    return sum(len(hp._forward_hooks) for hp in model.hook_dict.values())


@pytest.mark.parametrize("where", ["splice", "intervene", "attribute"])
def test_interrupt_at_every_hook_registration_leaves_no_hook(where, tiny, monkeypatch):
    model, tcs = tiny
    toks = _toks()
    clean = model(toks[None]).detach()

    def run():
        if where == "splice":
            with splice(model, tcs, error_term=True):
                model(toks[None])
        elif where == "intervene":
            intervene(model, tcs, toks, [(0, 1, 2, 0.0)])
        else:
            attribute(model, tcs, toks, progress=False)

    counter = _interrupt_on_nth_registration(monkeypatch, 10**9)
    run()
    total = len(counter)
    monkeypatch.undo()
    assert total > 0
    for n in range(1, total + 1):
        _interrupt_on_nth_registration(monkeypatch, n)
        with pytest.raises(KeyboardInterrupt):
            run()
        monkeypatch.undo()
        assert count_hooks(model) == 0 and _torch_hooks(model) == 0, f"hook left after interrupt {n}/{total}"
    assert torch.equal(model(toks[None]), clean)


def test_interrupt_inside_a_spliced_forward_leaves_no_hook(tiny):
    model, tcs = tiny
    toks = _toks()
    for layer in (0, 1):
        def boom(x, hook):
            raise KeyboardInterrupt("Ctrl-C in the forward pass")

        with pytest.raises(KeyboardInterrupt):
            with splice(model, tcs):
                model.run_with_hooks(toks[None], fwd_hooks=[(f"blocks.{layer}.hook_resid_post", boom)])
        assert count_hooks(model) == 0 and _torch_hooks(model) == 0


def test_graph_save_interrupted_keeps_old_files(tmp_path, tiny, monkeypatch):
    import tc_circuits.validate as v

    g = _graph(tiny)
    path = g.save(tmp_path / "g")
    before = _all_files(path)
    real = v.save_safetensors

    def dying(tensors, p, metadata=None):
        Path(p).write_bytes(b"partial")
        raise KeyboardInterrupt("kill during the graph write")

    monkeypatch.setattr("tc_circuits.graph.graph.save_safetensors", dying)
    with pytest.raises(KeyboardInterrupt):
        g.save(path)
    assert _all_files(path) == before and not list(path.glob("*.tmp"))
    monkeypatch.setattr("tc_circuits.graph.graph.save_safetensors", real)
    AttributionGraph.load(path)


PAYLOADS = ['<script>alert("x")</script>', '"><img src=x onerror=alert(1)>', "</script><script>alert(2)</script>"]


def test_hostile_strings_are_escaped_in_the_html_page(tmp_path, tiny):
    """Prompt, token strings, target labels and the title never reach the page as markup: the
    HTML outside scripts is escaped, data inside scripts cannot close the script tag, and the
    hover texts (which the page puts into innerHTML) are escaped."""
    import re

    from tc_circuits.viz.html_page import write_graph_page

    g = _graph(tiny)
    g.prompt = PAYLOADS[0]
    g.prompt_strings = [PAYLOADS[i % 3] for i in range(len(g.prompt_strings))]
    g.target_labels = [PAYLOADS[1]] * len(g.target_labels)
    page = write_graph_page(tmp_path / "p.html", g, title=PAYLOADS[2], progress=False).read_text()
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", page, re.S)
    outside = re.sub(r"<script\b[^>]*>.*?</script>", "", page, flags=re.S)
    for p in PAYLOADS:
        assert p not in outside, p
    assert not any("</script" in s.lower() for s in scripts)  # nothing can break out of a script
    hovers = [json.loads(f'"{h}"') for s in scripts for h in re.findall(r'"hover":"((?:[^"\\]|\\.)*)"', s)]
    assert hovers and not any("<img" in h or "<script" in h for h in hovers)
    assert any("&lt;img" in h or "&lt;script" in h for h in hovers)  # the token strings are there, escaped


def test_check_finite_fast_sum_never_hides_or_invents_a_bad_value():
    """The finiteness scan reads a sum first: an overflowing sum of finite values passes (the
    elementwise check decides), a single NaN / inf anywhere is still found and counted."""
    from tc_circuits.validate import check_finite

    big = torch.full((4,), 3e38)  # finite values whose float32 sum overflows to inf
    check_finite({"big": big}, "t")
    check_finite({"half": torch.full((8,), 60000.0, dtype=torch.float16)}, "t")
    for bad, what in ((float("nan"), "1 NaN and 0 infinite"), (float("inf"), "0 NaN and 1 infinite")):
        t = torch.randn(1000, 7)
        t[512, 3] = bad
        with pytest.raises(NonFiniteError, match=what):
            check_finite({"W": t}, "t")
    t = torch.randn(10)
    t[2], t[5] = float("inf"), float("-inf")  # inf + -inf: the sum is NaN, still caught
    with pytest.raises(NonFiniteError, match="0 NaN and 2 infinite"):
        check_finite({"W": t}, "t")


def test_read_checkpoint_config_names_the_missing_or_corrupted_file(tmp_path: Path) -> None:
    (tmp_path / "cfg.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(FileNotFoundError, match=r"demo file missing: .*w\.safetensors"):
        validate.read_checkpoint_config(tmp_path, "cfg.json", "w.safetensors", "demo")
    (tmp_path / "w.safetensors").write_bytes(b"")
    raw, weights = validate.read_checkpoint_config(tmp_path, "cfg.json", "w.safetensors", "demo")
    assert raw == {"a": 1} and weights == tmp_path / "w.safetensors"
    for text in ('{"a": ', "[1, 2]", "\udcff"):
        (tmp_path / "cfg.json").write_text(text, errors="surrogateescape")
        with pytest.raises(ValueError, match=r"corrupted demo config .*cfg\.json"):
            validate.read_checkpoint_config(tmp_path, "cfg.json", "w.safetensors", "demo")
