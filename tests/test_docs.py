"""The documentation site: strict mkdocs build, generated pages current, nav complete.

* ``mkdocs build --strict`` (a subprocess, into a temporary folder) must pass with no warning;
* ``docs/cli.md`` must hold the parser's real ``--help`` text and ``docs/tutorials/*.md`` the
  rendered tutorial sources (``python tests/docs_gen.py`` regenerates both);
* every page is in the nav, every public module has an API page, and the Python snippets of
  the front pages only import names that exist.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import docs_gen  # noqa: E402

ROOT = docs_gen.ROOT
DOCS = docs_gen.DOCS


def _nav_pages(nav) -> list[str]:
    out: list[str] = []
    for item in nav:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            for value in item.values():
                out += _nav_pages(value) if isinstance(value, list) else [value]
    return out


def _mkdocs_config() -> dict:
    yaml = pytest.importorskip("yaml")

    class Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml may use !!python/name tags; none are needed to read the nav.
    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("material")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert "WARNING" not in log, log[-5000:]
    site = tmp_path / "site"
    for page in ["index.html", "cli/index.html", "concepts/index.html", "api/attribution/index.html",
                 "tutorials/03_greater_than_circuit/index.html"]:
        assert (site / page).is_file(), page
    # mkdocstrings really rendered the docstrings (not an empty page).
    api = (site / "api" / "attribution" / "index.html").read_text()
    assert "Build the exact attribution graph" in api
    assert "AttributionConfig" in api


def test_generated_pages_are_current():
    """``docs/cli.md`` and the tutorial pages equal what ``tests/docs_gen.py`` renders."""
    pytest.importorskip("jupytext")
    stale = []
    for path, text in docs_gen.expected_pages().items():
        if path == DOCS / "cli.md" and sys.version_info[:2] != (3, 11):
            continue  # argparse's layout differs between Python versions; checked below
        if not path.is_file() or docs_gen.strip_outputs(path.read_text()) != text:
            stale.append(str(path.relative_to(ROOT)))
    assert not stale, f"stale docs (run `python tests/docs_gen.py`): {stale}"


def test_cli_page_lists_every_option():
    """Version-independent check: every subcommand and every option string is on the page."""
    from tc_circuits.cli import build_parser

    page = (DOCS / "cli.md").read_text()
    parser = build_parser()
    todo = [("tc-circuits", parser)]
    seen = 0
    while todo:
        title, p = todo.pop()
        assert f"## `{title}`" in page, title
        for action in p._actions:
            for opt in action.option_strings:
                assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", page), f"{title}: {opt}"
                seen += 1
            choices = getattr(action, "choices", None)
            if isinstance(choices, dict):  # a subparsers action: name -> parser
                todo += [(f"{title} {name}", sub) for name, sub in choices.items()]
    assert seen > 100


def test_help_text_is_the_parser_output():
    """The page's text for ``demo`` is the real parser's help (with its defaults)."""
    text = docs_gen.help_text(["demo"])
    assert text.startswith("usage: tc-circuits demo")
    assert "(default: 'out/demo')" in text
    import tc_circuits

    organism = docs_gen.help_text(["organism", "train"])
    assert str(Path(tc_circuits.__file__).resolve().parent) not in organism
    assert "<tc_circuits>/organism/weights" in organism


def test_every_page_is_in_the_nav():
    nav = set(_nav_pages(_mkdocs_config()["nav"]))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages - nav == set()
    assert nav - pages == set()


def test_strip_outputs():
    """Recorded output blocks are exactly what the sync check ignores."""
    page = docs_gen.render_tutorial_md(docs_gen.TUTORIALS[0])
    end = page.index("\n```\n", page.index("```python")) + 4
    recorded = page[:end] + f"\n\n{docs_gen.OUTPUT_FENCE}\n1 2 3\nfour\n```" + page[end:]
    assert recorded != page
    assert docs_gen.strip_outputs(recorded) == page


def test_tutorial_pages_match_sources():
    names = {p.stem for p in docs_gen.TUTORIALS}
    assert names == {p.stem for p in (DOCS / "tutorials").glob("*.md")}
    assert len(names) >= 4


PUBLIC_MODULES = [
    "tc_circuits.models.sites", "tc_circuits.coders.transcoder", "tc_circuits.training.trainer", "tc_circuits.training.config",
    "tc_circuits.training.data", "tc_circuits.training.activation_store", "tc_circuits.evaluation.splice", "tc_circuits.evaluation.evaluate",
    "tc_circuits.evaluation.metrics", "tc_circuits.tasks", "tc_circuits.tasks.greater_than", "tc_circuits.evaluation.compare",
    "tc_circuits.attribution.engine", "tc_circuits.attribution.exactness", "tc_circuits.attribution.linearise", "tc_circuits.attribution.targets",
    "tc_circuits.attribution.virtual_weights", "tc_circuits.graph.graph", "tc_circuits.graph.prune",
    "tc_circuits.graph.scores", "tc_circuits.graph.export", "tc_circuits.interventions",
    "tc_circuits.viz.graph_view", "tc_circuits.viz.dashboards", "tc_circuits.viz.html_page",
    "tc_circuits.formats", "tc_circuits.models.loading", "tc_circuits.models.fast_kernels", "tc_circuits.models.tokenizers_gpt2", "tc_circuits.organism",
    "tc_circuits.validate", "tc_circuits.attribution.memory", "tc_circuits.training.guard", "tc_circuits.models.safe_hooks",
]


def test_api_pages_cover_the_public_modules():
    directives = set()
    for page in (DOCS / "api").glob("*.md"):
        directives |= set(re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), re.M))
    missing = [m for m in PUBLIC_MODULES if m not in directives]
    assert not missing
    for name in directives:  # every directive names an importable module
        importlib.import_module(name)


@pytest.mark.parametrize("page", ["index.md", "quickstart.md", "concepts.md"])
def test_snippet_imports_exist(page):
    """Every ``from X import a, b`` in the page's Python blocks names real objects."""
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)
    assert blocks
    n = 0
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{page}: {node.module}.{alias.name}"
                    n += 1
    assert n > 0
