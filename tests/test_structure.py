"""The package's shape: imports point one way (no circle, counting imports inside functions too, but for the
one declared call-time delegation), the layers import only the config, the model never reads a file and weights
formats never build a model, only runs.py spells the run-folder layout, and no module grows past 500 lines."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vitkit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(module_level_only: bool = False) -> dict[str, set[str]]:
    """{module: the vitkit modules it imports anywhere in its source (inside functions too, unless
    ``module_level_only``)}."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _imports(ast.parse(path.read_text(), str(path)), module_level_only):
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


def _imports(tree: ast.AST, module_level_only: bool):
    """The import statements of ``tree``; with ``module_level_only``, none inside a function."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if not (module_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))):
            yield from _imports(node, module_level_only)


# The imports against the floors, each inside a function, run when called: VisionTransformer.from_pretrained
# (the model's public API) hands over to vitkit.pretrained, which builds the model from files; vitkit.compat,
# which the config and the model inherit from, hands out ``ViT`` and the simple save/load_checkpoint from the
# modules that define them.
DELEGATIONS = {("vitkit.model", "vitkit.pretrained"), ("vitkit.compat", "vitkit.model"),
               ("vitkit.compat", "vitkit.train.checkpoint")}


def floors() -> dict[str, set[str]]:
    """The import graph less the declared delegations, which must stay inside functions."""
    graph = import_graph()
    for module, target in DELEGATIONS:
        graph[module] = graph[module] - {target}
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
    cycle = find_cycle(floors())
    assert cycle is None, " -> ".join(cycle)


def test_the_delegations_are_imported_only_when_called():
    top = import_graph(module_level_only=True)
    assert not [(m, t) for m, t in DELEGATIONS if t in top[m]]
    graph = import_graph()
    assert all(t in graph[m] for m, t in DELEGATIONS), "a declared delegation no longer exists: remove it"


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


LAYERS = sorted(module_name(p) for p in (PACKAGE / "layers").rglob("*.py"))


def test_the_layer_list_is_the_folder():
    assert "vitkit.layers" in LAYERS and "vitkit.layers.attention" in LAYERS


@pytest.mark.parametrize("module", LAYERS)
def test_the_layers_import_only_the_config_and_each_other(module):
    graph = import_graph()
    allowed = {"vitkit.config", "vitkit.typed_config", "vitkit.geometry", "vitkit.errors"} | \
        {m for m in graph if m.startswith("vitkit.layers")}
    assert graph.get(module, set()) <= allowed, graph[module] - allowed


def test_the_model_never_reads_a_file():
    """model.py defines the model from its config and the layers; files, the Hub and other libraries' formats
    become models in vitkit.pretrained (see DELEGATIONS), so model.py imports no reader of weights."""
    graph = floors()
    allowed = {"vitkit.compat", "vitkit.config", "vitkit.geometry", "vitkit.errors"} | set(LAYERS)
    assert graph["vitkit.model"] <= allowed, graph["vitkit.model"] - allowed
    tree = ast.parse((PACKAGE / "model.py").read_text())
    outside = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | \
        {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    assert not outside & {"safetensors", "huggingface_hub", "timm", "transformers", "open_clip"}, outside


def test_weight_formats_never_build_a_model():
    """checkpoint, hub and interop turn files into a config and a state dict (with the layers' tensor maths);
    vitkit.pretrained builds the model from them."""
    graph = import_graph()
    formats = {m for m in graph if m in ("vitkit.checkpoint", "vitkit.hub") or m.startswith("vitkit.interop")}
    for module in formats:
        assert not {"vitkit.model", "vitkit.pretrained"} & graph[module], module
    assert {"vitkit.model", "vitkit.hub", "vitkit.interop", "vitkit.checkpoint"} <= graph["vitkit.pretrained"]


# A run folder's layout: its checkpoints folder, and the names of the weights and training states in it.
LAYOUT_NAMES = {"best", "last", "previous", "last.state.pt", "previous.state.pt"}


def layout_spellings(source: str) -> list[int]:
    """Lines of ``source`` that spell the run-folder layout: the string "checkpoints" or a path relative to a
    run starting with it, or a path built with a layout name (``x / "best"``, ``x / f"last{suffix}"``).
    Docstrings and sentences that mention ``RUN/checkpoints/best`` to a reader are not paths."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                (node.value == "checkpoints" or node.value.startswith("checkpoints/")):
            found.append(node.lineno)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            right = node.right
            if isinstance(right, ast.JoinedStr) and right.values and isinstance(right.values[0], ast.Constant):
                right = right.values[0]
            if isinstance(right, ast.Constant) and isinstance(right.value, str) and \
                    (right.value in LAYOUT_NAMES or right.value.split(".")[0] in {"last", "previous"}):
                found.append(node.lineno)
    return found


def test_only_runs_py_spells_the_run_folder_layout():
    found = [f"{p.relative_to(PACKAGE)}:{line}" for p in PACKAGE.rglob("*.py") if p.name != "runs.py" or
             p.parent != PACKAGE for line in layout_spellings(p.read_text())]
    assert not found, found


def test_the_layout_finder_finds_spellings():
    assert len(layout_spellings('p = run / "checkpoints" / "best"')) == 2
    assert layout_spellings('x = {"model": "checkpoints/best"}') == [1]
    assert layout_spellings('p = d / f"last{SUFFIX}"') == [1]
    assert layout_spellings('print("pass RUN/checkpoints/best")') == []


def test_no_module_is_longer_than_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long


def test_the_package_speaks_of_itself():
    """No issue numbers in the package, and the seed documents only in vitkit/compat.py, the one room that keeps
    their names working."""
    found = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if ISSUE.search(line) or (SEEDS.search(line) and p != PACKAGE / "compat.py")]
    assert not found, found


def test_compat_is_where_the_seeds_are_spoken_of():
    assert SEEDS.search((PACKAGE / "compat.py").read_text())


ISSUE = re.compile(r"\bissue \d+", re.IGNORECASE)
SEEDS = re.compile(r"\bseed[- _]?0?\d\d+|\bseed-\d+|\bthe seeds\b|\bseed doc(ument)?s?\b", re.IGNORECASE)


def test_the_history_patterns_catch_their_spellings():
    assert ISSUE.search("issue 26") and ISSUE.search("Issue 3")
    for said in ("seed 003", "seed-003-style code", "seed-12", "the seeds' aliases", "The seeds",
                 "the seed documents", "a seed document", "seed docs"):
        assert SEEDS.search(said), said
    for fine in ("split_seed", "seed: 0", "the seed of the split", "torch.manual_seed(cfg.seed)", "seeded by",
                 "the run's seed", "seeds it from (seed, epoch)", "issue"):
        assert not SEEDS.search(fine) and not ISSUE.search(fine), fine
