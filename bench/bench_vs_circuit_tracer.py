"""Benchmark: our attribution engine vs circuit-tracer on the same model, transcoders, prompt.

Each side runs in its own fresh subprocess (ours in ``.venv``, circuit-tracer in
``.venv-peers``, see ``bench/requirements-peers.txt``), interleaved, best of ``--repeats``.
Both see the same HookedTransformer weights (a ``state_dict`` file), the same per-layer TopK
skip transcoders (written with :func:`tc_circuits.formats.save_circuit_tracer`, read back by
circuit-tracer as ``SingleLayerTranscoder`` with its ``TopK`` activation: its
``load_transcoder_set`` only builds ReLU / JumpReLU), the same prompt, the same logit targets
(circuit-tracer's demeaned unembedding columns; ours the direction ``onehot - 1/V``, which
reads the same vector) and the same ``max_feature_nodes``. After timing, one extra run per side
dumps its edges and the edges are compared on the nodes both graphs have. Each side run times
the first graph in its fresh process and then ``--warm`` more calls in the same process.

    python bench/bench_vs_circuit_tracer.py [--quick] [--repeats 3] [--warm 2] [--threads 1]

writes ``bench/results/vs_circuit_tracer.md``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS_PY = ROOT / ".venv" / "bin" / "python"
PEER_PY = ROOT / ".venv-peers" / "bin" / "python"
sys.path.insert(0, str(Path(__file__).parent))

import _family_cases  # noqa: E402  (gemma2-shape / llama3-shape: a fake offline Hub snapshot)
from _mem import peak_rss_mb  # noqa: E402


# ----------------------------------------------------------------------------- preparation
def prepare(case: dict, workdir: Path) -> None:
    """Write model cfg + weights, transcoders (circuit-tracer format), tokens, targets."""
    import torch

    from tc_circuits.formats import save_circuit_tracer

    if case["model"] in _family_cases.CASE_MODELS:
        return _family_cases.prepare(case, workdir)
    if case["model"] == "organism":
        from tc_circuits.organism import load_organism, load_organism_transcoders

        model = load_organism()
        tcs = load_organism_transcoders("skip_transcoder")
        gen = torch.Generator().manual_seed(1)
        body = torch.randint(1, model.cfg.d_vocab, (case["length"] - 1,), generator=gen)
        tokens = torch.cat([torch.tensor([model.tokenizer.bos_token_id or 0]), body])
    else:
        from bench_attribution import GPT2, build

        spec = dict(GPT2, n_layers=case.get("n_layers", 12), n_latents=case.get("n_latents", GPT2["n_latents"]))
        model, tcs, tokens = build(spec, case["length"], case["k"], "cpu")
        tokens[0] = 0  # a "special" first token for circuit-tracer's BOS convention
    with torch.no_grad():
        logits = model(tokens[None])[0, -1]
    targets = torch.topk(logits, case["n_targets"]).indices
    # circuit-tracer is handed TopK below (its 0.5.0 loader cannot read ``activation: topk``)
    save_circuit_tracer(dict(tcs.items()) if hasattr(tcs, "items") else tcs, workdir / "tcs", allow_topk=True)
    torch.save(model.state_dict(), workdir / "model.pt")
    (workdir / "cfg.json").write_text(json.dumps(model.cfg.to_dict(), default=str))
    torch.save({"tokens": tokens, "targets": targets, "k": tcs[0].cfg.k}, workdir / "inputs.pt")


def _cfg(workdir: Path, dtype: str = "float32"):
    import torch
    from transformer_lens import HookedTransformerConfig

    raw = json.loads((workdir / "cfg.json").read_text())
    keep = {k: v for k, v in raw.items() if k in HookedTransformerConfig.__dataclass_fields__ and v is not None}
    for k in ("dtype", "device", "n_params", "tokenizer_prepends_bos", "original_architecture"):
        keep.pop(k, None)
    keep["device"] = "cpu"
    keep["dtype"] = getattr(torch, dtype)  # a half-precision case: both sides' models and transcoders in it
    return HookedTransformerConfig(**keep)


# ----------------------------------------------------------------------------- one side
def _timed(run, job: dict):
    """``(graph, first call s, best warm call s or None, cpu s of the first call, best warm cpu s)``:
    the first call in this fresh process, then ``job["warm"]`` more calls (same model, same
    inputs), as in a notebook session. CPU seconds (``time.process_time``) are what the side's
    threads spent, which a loaded machine inflates less than the wall time."""
    t0, c0 = time.perf_counter(), time.process_time()
    g = run()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    warm = warm_cpu = None
    for _ in range(job.get("warm", 0)):
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        warm = min(warm or 1e30, time.perf_counter() - t0)
        warm_cpu = min(warm_cpu or 1e30, time.process_time() - c0)
    return g, dt, warm, dc, warm_cpu


def run_ours(workdir: Path, job: dict) -> dict:
    import torch
    from transformer_lens import HookedTransformer

    from tc_circuits.attribution import Target, attribute
    from tc_circuits.formats import load_circuit_tracer

    dtype = job.get("dtype", "float32")
    if _family_cases.is_family(workdir):
        if dtype != "float32":
            raise ValueError("the family cases run in float32 only")
        model, tcs = _family_cases.load_ours(workdir)
    else:
        model = HookedTransformer(_cfg(workdir, dtype))
        model.load_state_dict(torch.load(workdir / "model.pt"))
        model.eval()
        from tc_circuits.models.model_info import weight_processing

        tcs = load_circuit_tracer(workdir / "tcs", processing=weight_processing(model))
        tcs = {L: tc.to(getattr(torch, dtype)) for L, tc in tcs.items()}
        model.cfg.model_name = tcs[0].cfg.model_name  # the bench model is rebuilt from its cfg; same weights
    inp = torch.load(workdir / "inputs.pt")
    V = model.cfg.d_vocab
    tgts = []
    for t in inp["targets"].tolist():
        d = torch.full((V,), -1.0 / V)
        d[t] += 1.0
        tgts.append(Target(direction=d, label=str(t), token_id=t))
    def run():
        return attribute(model, tcs, inp["tokens"], targets=tgts, max_feature_nodes=job["max_feature_nodes"],
                         batch_size=job["batch"], progress=False, check_exactness=False)

    base = peak_rss_mb()
    g, dt, warm, dc, warm_cpu = _timed(run, job)
    out = {"seconds": dt, "seconds_warm": warm, "cpu_seconds": dc, "cpu_seconds_warm": warm_cpu,
           "peak_rss_mb": peak_rss_mb(),
           "rss_growth_mb": peak_rss_mb() - base,
           "edges": g.n_edges, "active": g.metadata["n_active_features"],
           "expanded": int(g.nodes.expanded[g.indices_of("feature")].sum())}
    if job.get("dump"):
        n = g.nodes
        torch.save({"t": g.edge_target, "s": g.edge_source, "w": g.edge_weight, "kind": n.type, "layer": n.layer,
                    "pos": n.pos, "latent": n.latent, "token_id": n.token_id}, job["dump"])
    return out


def run_ct(workdir: Path, job: dict) -> dict:
    import torch
    from circuit_tracer import attribute

    inp = torch.load(workdir / "inputs.pt")
    if _family_cases.is_family(workdir):
        model = _family_cases.load_ct(workdir)
    else:
        model = _ct_rebuilt(workdir, inp, job.get("dtype", "float32"))

    def run():
        return attribute(inp["tokens"], model, attribution_targets=inp["targets"],
                         max_feature_nodes=job["max_feature_nodes"], batch_size=job["batch"], verbose=False)

    base = peak_rss_mb()
    g, dt, warm, dc, warm_cpu = _timed(run, job)
    A = g.adjacency_matrix
    out = {"seconds": dt, "seconds_warm": warm, "cpu_seconds": dc, "cpu_seconds_warm": warm_cpu,
           "peak_rss_mb": peak_rss_mb(),
           "rss_growth_mb": peak_rss_mb() - base,
           "edges": int((A != 0).sum()), "active": int(g.active_features.shape[0]),
           "expanded": int(g.selected_features.shape[0])}
    if job.get("dump"):
        torch.save({"A": A, "active": g.active_features, "selected": g.selected_features,
                    "n_pos": int(inp["tokens"].shape[0]), "n_layers": model.cfg.n_layers,
                    "targets": inp["targets"]}, job["dump"])
    return out


def _ct_rebuilt(workdir: Path, inp: dict, dtype: str = "float32"):
    """circuit-tracer's model rebuilt from the bench model's cfg + weights, with TopK transcoders."""
    import torch
    import yaml
    from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
    from circuit_tracer.transcoder import TranscoderSet
    from circuit_tracer.transcoder.activation_functions import TopK
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder
    from safetensors.torch import load_file

    conf = yaml.safe_load((workdir / "tcs" / "config.yaml").read_text())
    layers = {}
    for L, name in enumerate(conf["transcoders"]):
        sd = load_file(workdir / "tcs" / name)
        n, d = sd["W_enc"].shape
        tc = SingleLayerTranscoder(d, n, TopK(inp["k"]), L, skip_connection="W_skip" in sd, dtype=getattr(torch, dtype),
                                   device=torch.device("cpu"))
        tc.load_state_dict(sd)  # cast to the transcoder's dtype
        layers[L] = tc
    tset = TranscoderSet(layers, feature_input_hook=conf["feature_input_hook"],
                         feature_output_hook=conf["feature_output_hook"], scan="bench")
    model = TransformerLensReplacementModel.from_config(_cfg(workdir, dtype), tset)
    sd = torch.load(workdir / "model.pt")
    ren = {}
    for k, v in sd.items():
        if ".mlp." in k:
            k = k.replace(".mlp.", ".mlp.old_mlp.")
        if k.startswith("unembed."):
            k = k.replace("unembed.", "unembed.old_unembed.")
        ren[k] = v
    missing, unexpected = model.load_state_dict(ren, strict=False)
    bad = [m for m in missing if not m.startswith("transcoders.") and "IGNORE" not in m and "mask" not in m]
    if bad or unexpected:
        raise RuntimeError(f"state dict mismatch: missing {bad[:5]}, unexpected {unexpected[:5]}")
    model.eval()

    class Tok:  # circuit-tracer needs decode / special ids; token 0 plays BOS
        all_special_ids = [int(inp["tokens"][0])]
        bos_token_id = int(inp["tokens"][0])
        vocab_size = model.cfg.d_vocab
        padding_side = "right"
        pad_token_id = eos_token_id = int(inp["tokens"][0])

        def decode(self, ids):
            return " ".join(map(str, ids if isinstance(ids, list) else [ids]))

    model.tokenizer = Tok()
    return model


# ----------------------------------------------------------------------------- comparison
def compare(ours_path: Path, ct_path: Path) -> dict:
    """Max |difference| of the edges both graphs have, relative to the largest |edge|."""
    import torch

    from tc_circuits.graph.graph import type_code

    o, c = torch.load(ours_path), torch.load(ct_path)
    P, L = c["n_pos"], c["n_layers"]
    act, sel = c["active"], c["selected"]
    nf = len(sel)
    # circuit-tracer node -> key
    keys = [("f", *map(int, act[i])) for i in sel.tolist()]
    keys += [("e", layer, p) for layer in range(L) for p in range(P)]
    keys += [("tok", p) for p in range(P)]
    keys += [("logit", int(t)) for t in c["targets"]]
    ct_index = {k: i for i, k in enumerate(keys)}
    kind = o["kind"]
    ours_keys = []
    for i in range(len(kind)):
        kd = int(kind[i])
        if kd == type_code("feature"):
            ours_keys.append(("f", int(o["layer"][i]), int(o["pos"][i]), int(o["latent"][i])))
        elif kd == type_code("error"):
            ours_keys.append(("e", int(o["layer"][i]), int(o["pos"][i])))
        elif kd == type_code("embedding"):
            ours_keys.append(("tok", int(o["pos"][i])))
        elif kd == type_code("target"):
            ours_keys.append(("logit", int(o["token_id"][i])))
        else:
            ours_keys.append(None)  # position / constant nodes: circuit-tracer has none
    omap = torch.tensor([ct_index.get(k, -1) if k is not None else -1 for k in ours_keys])
    A = c["A"].double()
    rows_expanded = torch.zeros(A.shape[0], dtype=torch.bool)
    rows_expanded[:nf] = True
    rows_expanded[-len(c["targets"]):] = True
    ti, si = omap[o["t"]], omap[o["s"]]
    both = (ti >= 0) & (si >= 0)
    both &= rows_expanded[ti.clamp_min(0)]
    ours_dense = torch.zeros_like(A)
    ours_dense.index_put_((ti[both], si[both]), o["w"][both].double(), accumulate=True)
    # compare only rows both expanded and columns both have
    row_ok = torch.zeros(A.shape[0], dtype=torch.bool)
    row_ok[ti[both].unique()] = True
    row_ok &= rows_expanded
    col_ok = torch.zeros(A.shape[0], dtype=torch.bool)
    col_ok[omap[omap >= 0]] = True
    col_ok[[ct_index[("e", layer, 0)] for layer in range(L)]] = False  # circuit-tracer zeroes position-0 errors
    sub_o, sub_c = ours_dense[row_ok][:, col_ok], A[row_ok][:, col_ok]
    scale = float(sub_c.abs().max())
    diff = (sub_o - sub_c).abs()
    r, k = divmod(int(diff.argmax()), diff.shape[1])
    worst = {"row": keys[int(torch.nonzero(row_ok)[r])], "col": keys[int(torch.nonzero(col_ok)[k])],
             "ours": float(sub_o[r, k]), "ct": float(sub_c[r, k])}
    return {"worst": worst, "rows_compared": int(row_ok.sum()), "cols_compared": int(col_ok.sum()),
            "edges_compared": int((sub_c != 0).sum()),
            "max_abs_diff": float((sub_o - sub_c).abs().max()), "max_abs_edge": scale,
            "max_rel_diff": float((sub_o - sub_c).abs().max()) / max(scale, 1e-30)}


# ----------------------------------------------------------------------------- driver
def side(py: Path, which: str, workdir: Path, job: dict, threads: int, mem_gib: float, timeout: float | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if which == "ct":
        env.update(_family_cases.hub_env(workdir))
    cmd = [str(py), __file__, "--side", which, "--workdir", str(workdir), "--job", json.dumps(job),
           "--threads", str(threads), "--mem-gib", str(mem_gib)]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"killed after the {timeout:.0f} s timeout"}
    if res.returncode != 0:
        if res.returncode < 0:
            return {"error": f"killed by signal {-res.returncode} after {time.perf_counter() - t0:.0f} s"}
        tail = res.stderr.strip().splitlines()[-1:] or ["?"]
        return {"error": tail[0][:200]}
    return json.loads(res.stdout.strip().splitlines()[-1])


CASES_QUICK = [
    dict(name="organism", model="organism", length=32, n_targets=5, max_feature_nodes=None, batch=64),
    dict(name="gpt2-shape", model="gpt2", length=32, k=16, n_targets=5, max_feature_nodes=128, batch=32),
]
CASES_FULL = CASES_QUICK + [
    dict(name="organism", model="organism", length=128, n_targets=10, max_feature_nodes=None, batch=64),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=["ours", "ct"])
    ap.add_argument("--workdir")
    ap.add_argument("--job")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mem-gib", type=float, default=16.0, help="address-space cap per side (clean MemoryError)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--warm", type=int, default=2, help="extra in-process calls per side run (best one reported as warm)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per side run; slower runs are killed")
    ap.add_argument("--cases", help="JSON list of cases (overrides the built-in ones), or comma-separated "
                    f"preset names: {', '.join(_family_cases.NAMED)}")
    ap.add_argument("--compare-only", action="store_true", help="skip the timed runs: one run per side, edges compared")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "vs_circuit_tracer.md"))
    args = ap.parse_args()
    if args.side:
        import torch

        torch.set_num_threads(args.threads)
        lim = int(args.mem_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
        fn = run_ours if args.side == "ours" else run_ct
        t0 = time.perf_counter()
        try:
            print(json.dumps(fn(Path(args.workdir), json.loads(args.job))))
        except (MemoryError, RuntimeError) as e:  # allocation failure under the cap: report time and peak RSS
            print(json.dumps({"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}",
                              "seconds_to_error": time.perf_counter() - t0,
                              "peak_rss_mb": peak_rss_mb()}))
        return
    if args.cases and not args.cases.lstrip().startswith("["):  # preset names
        cases = [c for name in args.cases.split(",") for c in _family_cases.NAMED[name.strip()]]
    else:
        cases = json.loads(args.cases) if args.cases else (CASES_QUICK if args.quick else CASES_FULL)
    rows = []
    for case in cases:
        with tempfile.TemporaryDirectory() as tmp:
            wd = Path(tmp)
            prepare(case, wd)
            job = {"max_feature_nodes": case["max_feature_nodes"], "batch": case["batch"], "warm": args.warm,
                   "dtype": case.get("dtype", "float32")}
            best: dict[str, dict] = {}
            for _ in range(0 if args.compare_only else args.repeats):
                for which, py in (("ours", OURS_PY), ("ct", PEER_PY)):
                    r = side(py, which, wd, job, args.threads, args.mem_gib, args.timeout)
                    print(case["name"], case["length"], which, r, flush=True)
                    if "error" in r or which not in best or r["seconds"] < best[which].get("seconds", 1e30):
                        keep = {k: v for k, v in best.get(which, {}).items() if k.startswith("best_")}
                        best[which] = {**r, **keep} if "error" not in best.get(which, {}) else best[which]
                    if r.get("seconds_warm") is not None and "error" not in best[which]:
                        prev = best[which].get("best_warm")
                        best[which]["best_warm"] = min(prev or 1e30, r["seconds_warm"])
                        prev = best[which].get("best_warm_cpu")
                        best[which]["best_warm_cpu"] = min(prev or 1e30, r["cpu_seconds_warm"])
                    if "error" not in r and "error" not in best[which]:
                        prev = best[which].get("best_cpu")
                        best[which]["best_cpu"] = min(prev or 1e30, r["cpu_seconds"])
            cmp = {}
            if args.compare_only or all("error" not in best[w] for w in best):
                print(side(OURS_PY, "ours", wd, {**job, "warm": 0, "dump": str(wd / "o.pt")}, args.threads, args.mem_gib))
                print(side(PEER_PY, "ct", wd, {**job, "warm": 0, "dump": str(wd / "c.pt")}, args.threads, args.mem_gib))
                cmp = compare(wd / "o.pt", wd / "c.pt")
                print("compare", cmp, flush=True)
            rows.append({"case": case, "ours": best.get("ours"), "ct": best.get("ct"), "cmp": cmp})
    if not args.compare_only:
        write(rows, args)


def _cpu_name() -> str:
    """The CPU's model name (ratios depend on it), or ``unknown``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _fmt(r: dict, key: str, f: str) -> str:
    return "OOM/error" if "error" in r else format(r[key], f)


def write(rows: list[dict], args) -> None:
    load = os.getloadavg()
    lines = [
        "| model | tokens | targets | feature rows (ours / ct) | active feats (ours / ct) | ours, first call (s) | "
        "circuit-tracer, first call (s) | speed-up | ours, warm (s) | circuit-tracer, warm (s) | warm speed-up | "
        "CPU s, first call (ours / ct) | CPU speed-up | CPU s, warm (ours / ct) | CPU warm speed-up | "
        "ours peak RSS (MB) | ct peak RSS (MB) | edges (ours / ct non-zero) | edge agreement: max abs diff / max abs edge |",
        "|" + "---|" * 19,
    ]
    for r in rows:
        c, o, t, m = r["case"], r["ours"], r["ct"], r["cmp"]
        ok = "error" not in o and "error" not in t
        sp = f"{t['seconds'] / o['seconds']:.2f}x" if ok else "-"
        wo, wt = o.get("best_warm"), t.get("best_warm")
        wsp = f"{wt / wo:.2f}x" if ok and wo and wt else "-"
        agree = f"{m['max_abs_diff']:.1e} / {m['max_abs_edge']:.1e} ({m['edges_compared']:,} edges)" if m else "-"
        co, ct_ = o.get("best_cpu"), t.get("best_cpu")
        cwo, cwt = o.get("best_warm_cpu"), t.get("best_warm_cpu")
        cpu = (f"{co:.2f} / {ct_:.2f} | {ct_ / co:.2f}x" if ok and co and ct_ else "- | -") + " | " + (
            f"{cwo:.2f} / {cwt:.2f} | {cwt / cwo:.2f}x" if ok and cwo and cwt else "- | -")
        lines.append(
            f"| {c['name']}{'' if c.get('dtype', 'float32') == 'float32' else ', ' + c['dtype']} | {c['length']} | {c['n_targets']} | {o.get('expanded', '-')} / {t.get('expanded', '-')} | "
            f"{o.get('active', '-')} / {t.get('active', '-')} | {_fmt(o, 'seconds', '.2f')} | {_fmt(t, 'seconds', '.2f')} | {sp} | "
            f"{wo and format(wo, '.2f') or '-'} | {wt and format(wt, '.2f') or '-'} | {wsp} | {cpu} | "
            f"{_fmt(o, 'peak_rss_mb', '.0f')} | {_fmt(t, 'peak_rss_mb', '.0f')} | {o.get('edges', 0):,} / {t.get('edges', 0):,} | {agree} |"
        )
        for w, x in (("ours", o), ("circuit-tracer", t)):
            if "error" in x:
                extra = (f" after {x['seconds_to_error']:.0f} s (setup included), peak RSS {x['peak_rss_mb']:.0f} MB"
                         if "seconds_to_error" in x else "")
                lines.append(f"\n{c['name']} {c['length']} tokens, {w}: `{x['error']}`{extra}\n")
    text = (
        "# Attribution: tc_circuits vs circuit-tracer\n\n"
        f"Machine: {platform.machine()} ({_cpu_name()}), CPU, torch threads {args.threads} per side, load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on 2 shared cores (timings are upper bounds; the "
        f"ratio is what counts; on a loaded machine the CPU seconds, `time.process_time` of each side, are the "
        f"fairer ratio). Best of {args.repeats} fresh subprocesses per side, interleaved; "
        f"*first call*: the first graph in a fresh process (imports and model loading not timed); *warm*: the best "
        f"of {args.warm} further calls in the same process, as in a notebook session; "
        f"address space capped at {args.mem_gib:g} GiB per side. Generated by `python bench/bench_vs_circuit_tracer.py`.\n\n"
        + "\n".join(lines) + "\n"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
