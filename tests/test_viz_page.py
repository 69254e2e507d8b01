"""The self-contained HTML page and ``tc-circuits view`` (organism loaders replaced by a tiny model)."""

from __future__ import annotations

import argparse
import re
import sys

import pytest
import torch
from conftest import make_tiny_model

sys.path.insert(0, "tests")
from attribution_helpers import make_transcoders  # noqa: E402

from tc_circuits.attribution import attribute  # noqa: E402
from tc_circuits.graph import prune_graph  # noqa: E402
from tc_circuits.viz.dashboards import DashboardConfig  # noqa: E402
from tc_circuits.viz.graph_view import GraphViewConfig  # noqa: E402
from tc_circuits.coders.transcoder import TranscoderSet  # noqa: E402
from tc_circuits.viz.html_page import graph_latents, write_graph_page  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    model = make_tiny_model(n_layers=2)
    tcs = make_transcoders(model, n_latents=16, k=3)
    graph = attribute(model, tcs, torch.tensor([1, 5, 9, 3, 7, 2]), progress=False, max_n_logits=3)
    return model, tcs, graph


def corpus(n=3):
    gen = torch.Generator().manual_seed(4)
    return [torch.randint(0, 50, (4, 10), generator=gen) for _ in range(n)]


def test_graph_latents_are_the_kept_features_by_influence(setup):
    _, _, g = setup
    lat = graph_latents(g, 0.9)
    pr = prune_graph(g, node_threshold=0.9)
    kept = {(int(g.nodes.layer[i]), int(g.nodes.latent[i])) for i in torch.nonzero(pr.node_mask & g.mask_of("feature")).flatten()}
    assert set(lat) == kept
    infl = {}
    for i in torch.nonzero(pr.node_mask & g.mask_of("feature")).flatten().tolist():
        key = (int(g.nodes.layer[i]), int(g.nodes.latent[i]))
        infl[key] = max(infl.get(key, 0.0), float(pr.node_influence[i]))
    assert [infl[k] for k in lat] == sorted((infl[k] for k in lat), reverse=True)


def test_page_has_graph_and_a_dashboard_per_feature(setup, tmp_path):
    model, tcs, g = setup
    vcfg = GraphViewConfig(node_thresholds=(0.6, 0.9), default_threshold=0.9)
    path = write_graph_page(tmp_path / "p.html", g, model=model, transcoders=tcs, token_source=corpus(),
                            view_cfg=vcfg, dashboard_cfg=DashboardConfig(max_batches=3), progress=False)
    text = path.read_text()
    latents = graph_latents(g, 0.9)
    ids = re.findall(r"<div class='tcd' id='feature-(\d+)-(\d+)'>", text)
    assert sorted((int(a), int(b)) for a, b in ids) == sorted(latents)
    assert [tuple(map(int, x)) for x in ids] == latents  # sections ordered by influence
    assert text.count("<script") >= 2 and "plotly_click" in text and "cdn.plot.ly/plotly" not in text
    assert "Top activations" in text  # corpus contexts present


def test_cli_view_with_recorded_or_given_dictionaries(setup, tmp_path, monkeypatch, capsys):
    import tc_circuits.cli.resolve as resolve
    from tc_circuits.cli import view as view_cli
    from tc_circuits.graph.provenance import ProvenanceError

    model, tcs, g = setup
    g.save(tmp_path / "graph")
    tcs_dir = TranscoderSet(tcs).save(tmp_path / "tcs")
    monkeypatch.setattr(resolve, "load_model_from", lambda opts: model)
    parser = argparse.ArgumentParser()
    view_cli.register(parser.add_subparsers())
    out = tmp_path / "page.html"
    feat = int(g.indices_of("feature")[0])
    (tmp_path / "labels.json").write_text('{"%s": "my label"}' % g.node_id(feat))
    extra = ["--png", str(tmp_path / "g.png"), "--svg", str(tmp_path / "g.svg")] if _can_render() else []
    args = parser.parse_args(["view", str(tmp_path / "graph"), "--out", str(out), "--max-batches", "2",
                              "--node-thresholds", "0.5", "0.8", "1.0", "--default-threshold", "0.8",
                              "--transcoders", str(tcs_dir), "--no-progress",
                              "--labels", str(tmp_path / "labels.json"), *extra])
    assert args.func(args) == 0
    printed = capsys.readouterr().out.split()
    assert printed[-1] == str(out.resolve())
    text = out.read_text()
    assert "node threshold: " in text and "feature-" in text
    assert "my label" in text  # the labels file reached the page
    if extra:
        assert printed[:2] == [str((tmp_path / "g.png").resolve()), str((tmp_path / "g.svg").resolve())]
        assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / "g.svg").read_text().lstrip().startswith("<svg")

    # other dictionaries of the same shape are refused (content hash), naming the layer
    other = make_transcoders(model, n_latents=16, k=3, seed=7)
    other_dir = TranscoderSet(other).save(tmp_path / "other")
    with pytest.raises(ProvenanceError, match="layer 0: content hash"):
        view_cli.view(tmp_path / "graph", tmp_path / "x.html",
                      model_opts=resolve.ModelOptions(transcoders=str(other_dir)))
    # a graph without recorded sources, and no --transcoders: a clear error
    with pytest.raises(ValueError, match="pass --transcoders"):
        view_cli.view(tmp_path / "graph", tmp_path / "x.html", model_opts=resolve.ModelOptions(model="tiny"))


def _can_render() -> bool:
    import shutil

    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    return any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))


@pytest.mark.skipif(not _can_render(), reason="static images need kaleido and Chromium")
def test_write_image_png_svg_and_notebook_fallback(setup, tmp_path):
    import struct

    from tc_circuits.viz import GraphViewConfig, graph_view

    model, tcs, g = setup
    view = graph_view(g, model=model, transcoders=tcs, cfg=GraphViewConfig(node_thresholds=(0.8,)))
    png = view.write_image(tmp_path / "g.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", png[16:24])  # the IHDR chunk: the figure's own size
    assert (w, h) == (view.figure.layout.width, view.figure.layout.height)
    svg = view.write_image(tmp_path / "g.svg").read_text()
    assert svg.lstrip().startswith("<svg") and 'class="scatterlayer' in svg
    with pytest.raises(ValueError, match="unknown image format"):
        view.write_image(tmp_path / "g.bmp")
    bundle = view._repr_mimebundle_()
    assert set(bundle) == {"text/html", "image/png"}
    assert "data:image/png;base64," in bundle["text/html"]  # shown where scripts do not run
