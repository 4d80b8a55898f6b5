"""The benchmark scripts stay runnable: every project name they import exists (checked from
their source, without running them: a benchmark runs its measurement when executed)."""
import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def project_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from mobileast... import name` in a file, lazy imports included."""
    return [(node.module, alias.name) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mobileast")
            for alias in node.names]


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_every_project_name_a_benchmark_imports_exists(path):
    missing = [f"{module}.{name}" for module, name in project_imports(path)
               if not hasattr(importlib.import_module(module), name)
               and importlib.util.find_spec(f"{module}.{name}") is None]
    assert not missing, f"{path.name} imports names that do not exist: {', '.join(missing)}"


def test_the_check_finds_a_missing_name(tmp_path):
    script = tmp_path / "bench_x.py"
    script.write_text("from mobileast.quantize import quantize_onnx\n")  # moved to mobileast.onnx_quantize
    (module, name), = project_imports(script)
    assert not hasattr(importlib.import_module(module), name)
