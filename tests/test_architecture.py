"""The package's layout: no import cycles, and every import points down the stages (scripts/import_graph.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "import_graph.py"


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_imports_have_no_cycle_and_point_down_the_stages():
    graph = _import_graph()
    edges = graph.graph()
    assert "grader.batch.run" in edges and "grader.checks.mapping" in edges  # the graph saw the package
    assert graph.problems(edges) == []


def test_the_graph_sees_cycles_and_upward_imports(tmp_path):
    """The measure itself can fail: a made-up package with a cycle and an import from render up into batch."""
    graph = _import_graph()
    for name, text in {"__init__.py": "", "spec.py": "import grader.report\n", "report.py": "from grader import spec\n",
                       "render/__init__.py": "", "render/text.py": "def f():\n    from grader.batch.run import run\n",
                       "batch/__init__.py": "", "batch/run.py": "from grader.render.text import f\n"}.items():
        path = tmp_path / "grader" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    found = graph.problems(graph.graph(tmp_path))
    assert "import cycle: grader.report, grader.spec" in found
    assert "grader.render.text imports grader.batch.run: stage batch is not below render" in found
