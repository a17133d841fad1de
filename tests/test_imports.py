"""The modules of diffusion/ import each other without a circle: hub.py (checkpoint I/O) never imports
pipeline.py, which builds on it. Read from the source with ``ast``, so imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "diffusion"


def module_name(path: Path) -> str:
    parts = ["diffusion", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of diffusion/ it names in an import statement, anywhere in the file (inside
    functions too) except under ``if TYPE_CHECKING:``, which never runs. ``from . import hub`` names
    ``diffusion.hub``; a package's ``__init__`` is not counted as imported by its own submodules just
    because Python runs it first."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and _is_type_checking(block.test)
            for stmt in block.body
            for n in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                for (
                    alias
                ) in node.names:  # `from . import hub` names diffusion.hub; `from .hub import load`, diffusion.hub
                    targets.add(f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_is_read():
    graph = import_graph()
    assert "diffusion.hub" in graph["diffusion.pipeline"]
    assert "diffusion.files" in graph["diffusion.hub"]
    assert "diffusion.schedule" in graph["diffusion.samplers.base"]


def test_no_module_of_diffusion_imports_one_that_imports_it_back():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_hub_does_not_import_the_pipeline():
    assert "diffusion.pipeline" not in import_graph()["diffusion.hub"]


def test_a_circle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_latents_stays_below_the_pipeline():
    """latents.py is the maths over a model function; the experiments on a pipeline live in latent_tasks.py."""
    graph = import_graph()
    assert "diffusion.pipeline" not in graph["diffusion.latents"]
    assert "diffusion.latents" in graph["diffusion.pipeline"]
    assert "diffusion.pipeline" in graph["diffusion.latent_tasks"]
    source = (PACKAGE / "latents.py").read_text()
    assert "TYPE_CHECKING" not in source and "DiffusionPipeline" not in source


def test_every_benchmark_and_training_module_imports():
    """Scripts outside the test suite's paths still import after a module moves (benchmarks/ has no tests)."""
    import importlib

    root = PACKAGE.parent
    for folder in ("benchmarks", "training", "studio"):
        for path in sorted((root / folder).glob("*.py")):
            importlib.import_module(f"{folder}.{path.stem}" if path.stem != "__init__" else folder)
