"""compare's picture: ground-truth rows on the shipped organism dictionaries, assembled into
PictureRows, markdown, HTML (+ PNG when kaleido works)."""

from __future__ import annotations

import pytest
import torch

from tc_circuits.evaluation.compare import CompareConfig, CompareResult, CompareRow, picture_rows
from tc_circuits.evaluation.ground_truth import ground_truth_rows, organism_labelled
from tc_circuits.viz.compare_report import html_report, write_outputs


@pytest.fixture(scope="module")
def organism_gt():
    from tc_circuits.organism import load_organism, load_organism_transcoders

    model = load_organism()
    tcs = load_organism_transcoders("skip_transcoder", model=model)
    labelled = organism_labelled(n_batches=1, rows=8, seq_len=64)
    return ground_truth_rows(model, {0: tcs[0], 2: tcs[2]}, "skip_transcoder", *labelled, ks=(1, 5))


def test_ground_truth_rows_on_shipped_dictionaries(organism_gt):
    for r in organism_gt:
        assert 0 < r.interp_f1 <= 1 and 0 <= r.matched_share <= 1
        assert r.interp_f1_with_tokens >= r.interp_f1 - 1e-9  # more variables can only raise the best F1
        assert 0.5 <= r.probe_raw <= 1 and all(0 <= v <= 1 for v in r.probe.values())
        assert 0 <= r.absorption <= 1 - r.main_recall + 1e-6


def _row(kind, k, dce):
    return CompareRow(kind, k, "all", 0.1, float(k), 0.0, dce, 0.01, 0.9, 0.9, None)


def test_picture_rows_average_layers_and_render(tmp_path, organism_gt):
    cfg = CompareConfig(kinds=("skip_transcoder", "sae"), k=16, k_sweep=(16,), out_dir=str(tmp_path))
    gt = [r.to_dict() for r in organism_gt]
    faith = {"curves": {"frozen": {"auc": 0.8, "auc_random": 0.5}, "live": {"auc": 0.7, "auc_random": 0.4}}}
    res = CompareResult(cfg, [_row("skip_transcoder", 16, 0.2), _row("sae", 16, 0.3)], 2.0, None,
                        extra={"skip_transcoder_k16": {"ground_truth": gt, "faithfulness": faith},
                               "sae_k16": {"ground_truth": gt, "faithfulness": {"skipped": "SAE"}}})
    pics = {p.kind: p for p in picture_rows(res)}
    st = pics["skip_transcoder"]
    assert st.interp_f1 == pytest.approx(sum(g["interp_f1"] for g in gt) / len(gt))
    assert st.probe_k1 == pytest.approx(sum(g["probe"]["1"] for g in gt) / len(gt))
    assert (st.faith_auc_frozen, st.faith_auc_live, st.faith_auc_random) == (0.8, 0.7, 0.5)
    assert pics["sae"].faith_auc_frozen is None and pics["sae"].delta_ce == 0.3
    md = res.to_markdown()
    assert "Reconstruction vs interpretability" in md and "| skip_transcoder | 16 | 0.2 |" in md
    page = html_report(res)
    assert "faithfulness AUC" in page and "interp_f1" in page
    files = write_outputs(res, tmp_path)
    assert (tmp_path / "compare.html").is_file()
    for key in ("png_compare", "png_picture"):
        if key in files:  # only where plotly's image export works here
            assert (tmp_path / f"{key[4:]}.png").read_bytes()[:4] == b"\x89PNG"
