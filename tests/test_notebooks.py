"""Every notebook in ``notebooks/`` runs top to bottom, is stored without outputs, and is
linked from the README.

The notebooks are found by globbing, so a new one is covered as soon as it exists.  Each runs
in a fresh ipykernel in the interpreter running the tests (so in the project's venv), with
``notebooks/`` as its working directory and matplotlib's non-interactive ``Agg`` backend.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbformat import NotebookNode

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT = 300
"""Seconds one cell may take; generous, since a shared machine can be slow."""


def load(path: Path) -> NotebookNode:
    """The notebook at ``path``, as format version 4 (nbformat's readers are not typed)."""
    notebook: NotebookNode = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    return notebook


class ThisInterpreter(KernelSpecManager):
    """Kernel specs in which every kernel is ipykernel in the interpreter running the tests.

    jupyter_client resolves ``python3`` through the kernel specs installed on the machine; a
    user-level one (``~/.local/share/jupyter/kernels/python3``) may point at another Python
    that lacks this project, so the kernel is named here instead.
    """

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name=f"Python 3 ({sys.executable})",
            language="python",
        )


def test_there_are_notebooks() -> None:
    """The issue's notebooks are in place (a glob that finds nothing would test nothing)."""
    assert [path.name for path in PATHS if path.name[:2] in ("01", "02", "03", "04")] == [
        "01_gossip_spread.ipynb",
        "02_failure_detection.ipynb",
        "03_lifeguard.ipynb",
        "04_partitions_and_churn.ipynb",
    ]


@pytest.mark.parametrize("path", PATHS, ids=[path.stem for path in PATHS])
def test_the_notebook_is_stored_without_outputs(path: Path) -> None:
    """A valid notebook with no outputs and no execution counts, so the repository stays
    small and diffs show only what changed in the code and the text."""
    notebook = load(path)
    nbformat.validate(notebook)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {index} has stored outputs: clear them"
            assert cell.execution_count is None, f"cell {index} has an execution count"


def test_the_readme_links_every_notebook() -> None:
    """The README links exactly the notebooks there are: none missing, none dangling."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\(notebooks/([^)\s]+\.ipynb)\)", readme))
    assert linked == {path.name for path in PATHS}


@pytest.mark.parametrize("path", PATHS, ids=[path.stem for path in PATHS])
def test_the_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cell runs without raising (nbclient raises CellExecutionError otherwise); the
    kernel is shut down afterwards."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the project, even when run from a checkout without installing it
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    notebook = load(path)
    kernel = KernelManager(kernel_name="python3", kernel_spec_manager=ThisInterpreter())
    client = NotebookClient(
        notebook,
        km=kernel,
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute(cleanup_kc=True)
