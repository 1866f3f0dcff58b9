"""The package's shape: imports point one way (no circle, counting imports inside functions too), the layers
import only the config, weights formats never build a model, and no module grows past 500 lines."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vitkit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the vitkit modules it imports anywhere in its source (inside functions too)}."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                # `from pkg import module` imports that module; `from module import name`, the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t and t not in modules:  # vitkit.data.images.to_uint8_chw -> vitkit.data.images
                    t = t.rpartition(".")[0]
                if t and t != name and t != "vitkit":
                    edges.add(t)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


LAYERS = ["vitkit.layers", "vitkit.layers.attention", "vitkit.layers.block", "vitkit.layers.mlp",
          "vitkit.layers.norm", "vitkit.layers.patch_embed", "vitkit.layers.pool", "vitkit.layers.position",
          "vitkit.layers.rope"]


@pytest.mark.parametrize("module", LAYERS)
def test_the_layers_import_only_the_config_and_each_other(module):
    graph = import_graph()
    allowed = {"vitkit.config", "vitkit.configtools", "vitkit.errors"} | {m for m in graph if m.startswith("vitkit.layers")}
    assert graph.get(module, set()) <= allowed, graph[module] - allowed


def test_the_model_imports_layers_and_weight_formats_and_those_never_build_a_model():
    """model.py builds itself from files through the weights formats (checkpoint, interop, hub), which turn
    files into a config and a state dict (with the layers' tensor maths) and never import the model."""
    graph = import_graph()
    formats = {m for m in graph if m in ("vitkit.checkpoint", "vitkit.hub") or m.startswith("vitkit.interop")}
    allowed = {"vitkit.config", "vitkit.presets", "vitkit.configtools", "vitkit.errors", "vitkit.fileio"} | \
        set(LAYERS) | formats
    assert graph["vitkit.model"] <= allowed, graph["vitkit.model"] - allowed
    for module in (m for m in graph if m in formats or m.startswith("vitkit.interop.")):
        assert "vitkit.model" not in graph[module], module


def test_no_module_is_longer_than_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long


def test_the_package_speaks_of_itself():
    """No issue numbers or seed-document history in the package."""
    import re
    found = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\bissue \d+|\bseed 0\d\d", line, re.IGNORECASE)]
    assert not found, found
