"""Generate the docs pages that mirror code: ``docs/cli.md`` and ``docs/tutorials/*.md``.

``python tests/docs_gen.py`` rewrites them; ``tests/test_docs.py`` fails when they are stale.

* ``docs/cli.md``: the ``--help`` text of every subcommand, produced by the real parser
  (``tc_circuits.cli.build_parser``) at a fixed width of 100 columns, with this checkout's
  absolute package path replaced by ``<tc_circuits>``.
* ``docs/tutorials/NN_name.md``: the jupytext percent source ``tutorials/NN_name.py``
  rendered as Markdown (markdown cells as text, code cells as Python blocks). With
  ``--execute`` the notebooks are run first and each code cell's printed output follows it
  in an ``output`` block (a record of one run; the sync test ignores those blocks, and the
  CI test executes the notebooks separately).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
WIDTH = "100"

CLI_INTRO = """\
# Command line

`tc-circuits COMMAND [options]` (also `python -m tc_circuits COMMAND`). Every subcommand is a
thin layer over the Python API: its options are generated from the same config dataclass
(`DemoConfig`, `TrainConfig`, `CompareConfig`, `GraphViewConfig` + `DashboardConfig`,
`AttributionConfig`, `OrganismTrainConfig`, ...), so the defaults below are the API's.
Errors in the arguments (a bad value, a missing file) print `tc-circuits COMMAND: error: ...`
and exit with status 2.

This page is generated from the parser itself (`python tests/docs_gen.py`;
`tests/test_docs.py` checks that it is current).

| command | what it does | guide |
|---|---|---|
| `demo` | the end-to-end demo (the bundled organism by default) | [Quick start](quickstart.md) |
| `organism train` / `organism eval` | reproduce the organism and its transcoders / print its greater-than score | [Concepts](concepts.md#the-bundled-model-organism) |
| `train` | train transcoders, skip transcoders or SAEs for several layers at once; ends with a held-out evaluation | [Training](training.md) |
| `evaluate` | FVU, explained variance, L0, dead, ΔCE, KL, CE recovered (+ a task) of any dictionaries | [Splicing](splicing.md) |
| `convert` | convert circuit-tracer / sparsify / SAELens / Dunefsky checkpoints | [Real models and formats](ecosystem.md) |
| `compare` | SAE vs transcoder vs skip transcoder: FVU, ΔCE, KL, L0, greater-than | [Splicing](splicing.md#comparing-sae-transcoder-and-skip-transcoder) |
| `attribute` | attribution graph of a prompt (+ Neuronpedia JSON, feature table as CSV) | [Attribution graphs](attribution.md) |
| `intervene` | ablate / steer a graph's features: each target's change, frozen and live | [Attribution graphs](attribution.md) |
| `view` | offline HTML page: graph view + feature dashboards | [Views](views.md) |

## One way to name a model and its dictionaries

Every command that needs a model takes the same options (`ModelOptions` in
`tc_circuits.cli.resolve`, also the Python entry point `resolve(ModelOptions(...))`):

* `--model`: a TransformerLens name (`gpt2`), a local Hugging Face folder (`save_pretrained`
  output, loaded offline) or `organism` (the default: the bundled organism);
* `--transcoders`: a folder in any supported format (ours, circuit-tracer, SAELens, sparsify,
  Dunefsky; detected from its files and checked against the model) or an organism kind
  (`skip_transcoder`, `transcoder`, `sae`); default the organism's skip transcoders;
* `--device` (`cpu`, `cuda`, `mps`; default the best available) and `--dtype`;
* `--no-progress` on every command.

A graph written by `attribute` records its model (name, config hash, weight processing), the
content hash of every dictionary and where both were found. `intervene` and `view` default to
those; dictionaries whose content hash differs are refused with an error naming the layer.
Target tokens are read as inside the prompt (`--diff-tokens Mary John` after `"... to"` means
`" Mary"` and `" John"`), and a named token with probability < 1e-4 warns, naming the likely
intended one. `train` warns before it starts when the budget cannot work (warm-up or
dead-latent window longer than the run, ...; an error with `--strict`).

`tc-circuits --help` and every subcommand's `--help` except `organism`'s import no torch (they
answer in well under a second): only the command being run is imported, and configs that live
beside torch code are read from their source (`add_config_args`).
"""


def help_text(argv: list[str]) -> str:
    """The ``--help`` output of ``tc-circuits *argv`` at a fixed width."""
    from tc_circuits.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    buf = io.StringIO()
    try:
        parser = build_parser()
        with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
            parser.parse_args([*argv, "--help"])
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    import tc_circuits

    return buf.getvalue().replace(str(Path(tc_circuits.__file__).resolve().parent), "<tc_circuits>")


def cli_commands() -> list[list[str]]:
    """Every command line documented: the top level, each subcommand, organism's actions."""
    from tc_circuits.cli import SUBCOMMANDS

    out: list[list[str]] = [[]]
    for name in SUBCOMMANDS:
        out.append([name])
        if name == "organism":
            out += [["organism", "train"], ["organism", "eval"]]
    return out


def render_cli_md() -> str:
    parts = [CLI_INTRO]
    for argv in cli_commands():
        title = " ".join(["tc-circuits", *argv])
        parts.append(f"\n## `{title}`\n\n```text\n{help_text(argv).rstrip()}\n```\n")
    return "".join(parts)


OUTPUT_FENCE = '```text title="output"'
_OUTPUT_BLOCK = re.compile(r"\n\n" + re.escape(OUTPUT_FENCE) + r"\n.*?\n```(?=\n)", re.S)
MAX_OUTPUT_LINES = 60


def strip_outputs(markdown: str) -> str:
    """The page without its recorded ``output`` blocks."""
    return _OUTPUT_BLOCK.sub("", markdown)


def _stdout(cell) -> str:
    text = "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")
    lines = text.rstrip().splitlines()
    if len(lines) > MAX_OUTPUT_LINES:
        lines = lines[:MAX_OUTPUT_LINES] + [f"... ({len(lines) - MAX_OUTPUT_LINES} more lines)"]
    return "\n".join(line.rstrip() for line in lines).replace("```", "` ` `")


def render_tutorial_md(path: Path, executed=None) -> str:
    """Markdown of one jupytext percent-format tutorial (outputs of ``executed`` if given)."""
    import jupytext

    nb = executed if executed is not None else jupytext.read(path)
    rel = path.relative_to(ROOT).as_posix()
    out = []
    for i, cell in enumerate(nb.cells):
        src = cell.source.rstrip()
        if not src:
            continue
        if cell.cell_type == "markdown":
            out.append(src)
            if i == 0:
                out.append(
                    f"!!! note \"Run it\"\n    Source: `{rel}` (jupytext percent format). Open it in Jupyter "
                    f"with jupytext, or run `jupytext --to notebook {rel}`; `python {rel}` runs it as a "
                    "script. `tests/test_tutorials.py` executes every tutorial."
                )
        else:
            block = f"```python\n{src}\n```"
            printed = _stdout(cell) if executed is not None else ""
            if printed:
                block += f"\n\n{OUTPUT_FENCE}\n{printed}\n```"
            out.append(block)
    return "\n\n".join(out) + "\n"


def tutorial_page(path: Path) -> Path:
    return DOCS / "tutorials" / (path.stem + ".md")


def expected_pages() -> dict[Path, str]:
    pages = {DOCS / "cli.md": render_cli_md()}
    for t in TUTORIALS:
        pages[tutorial_page(t)] = render_tutorial_md(t)
    return pages


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pages = expected_pages()
    if "--execute" in argv:  # record one run's printed output under each code cell
        import tempfile

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from test_tutorials import execute_tutorial

        for t in TUTORIALS:
            with tempfile.TemporaryDirectory() as tmp:
                print("executing", t.relative_to(ROOT), flush=True)
                pages[tutorial_page(t)] = render_tutorial_md(t, execute_tutorial(t, Path(tmp)))
    for path, text in pages.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            print("wrote", path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
