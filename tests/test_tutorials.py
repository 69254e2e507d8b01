"""Execute every tutorial (``tutorials/NN_*.py``, jupytext percent format) as a notebook.

Each runs in a fresh kernel (nbclient) with a per-notebook timeout, inside a temporary
working directory, so anything a tutorial writes (``out/...``) stays there. A cell error
fails the test with the notebook's traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
TIMEOUT_S = int(os.environ.get("TC_TUTORIAL_TIMEOUT", "300"))


KERNEL = "tc_circuits_tutorials"


def execute_tutorial(path: Path, workdir: Path):
    """Convert ``path`` to a notebook and execute it with ``workdir`` as the working directory.

    The kernel is this interpreter (a kernelspec written under ``workdir/jupyter`` and put
    first on ``JUPYTER_PATH``), whatever kernelspecs the machine has installed.
    """
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    spec_dir = workdir / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tc_circuits (tests)", "language": "python",
    }))
    run_dir = workdir / "run"
    run_dir.mkdir(exist_ok=True)
    nb = jupytext.read(path)
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(workdir / "jupyter"), *([old] if old else [])])
    try:
        nbclient.NotebookClient(
            nb, timeout=TIMEOUT_S, kernel_name=KERNEL, resources={"metadata": {"path": str(run_dir)}},
        ).execute()
    finally:
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old
    return nb


def test_tutorials_exist():
    names = [p.name for p in TUTORIALS]
    assert names[:5] == [
        "01_train_transcoders.py",
        "02_splice_and_compare.py",
        "03_greater_than_circuit.py",
        "04_real_models.py",
        "05_your_own_model.py",
    ]


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_executes(path: Path, tmp_path: Path):
    nb = execute_tutorial(path, tmp_path)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(o.get("output_type") == "stream" for o in outputs), "tutorial printed nothing"
    # Nothing was written next to the sources.
    assert not (ROOT / "tutorials" / "out").exists()
