"""The package's import graph: no circle, and nothing imports a module of a higher layer.

Every import counts, at module level or inside a function (a function-level import is still a
dependency; it only hides it from the interpreter at start-up); imports under
``if TYPE_CHECKING:`` are type hints only and do not count. Layers, lowest first (data flows
files -> volume -> sub-volumes -> views -> networks -> loss; commands sit on top):
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("genesis", "proxy_tasks", "finetune", "weights")

#: module prefix -> layer (the longest matching prefix wins)
LAYERS: dict[str, int] = {
    # core: errors, registry, configuration files, atomic files, seeds, devices, checkpoints, pictures
    "genesis": 0, "weights": 0,
    # reading files
    "genesis.io": 1, "genesis.nnunet": 1, "genesis.nnunet.plans": 1,
    # volumes -> normalised volumes -> sub-volumes; data kinds; nnU-Net data
    "genesis.data": 2, "genesis.nnunet.data": 2,
    # networks and proxy transforms
    "genesis.models": 3, "proxy_tasks": 3,
    # methods: views, modules, losses
    "genesis.methods": 4,
    # the training loop, the recipe, pretraining and its evaluation, embeddings probes
    "genesis.training": 5, "genesis.embeddings": 5,
    # what is made of trained networks: weights, exports, nnU-Net and MONAI glue
    "genesis.weights": 6, "genesis.nnunet.export": 6, "genesis.nnunet.trainer": 6, "genesis.nnunet.finetune": 6,
    "genesis.nnunet.install": 6, "genesis.monai_transforms": 6, "genesis.monai_reader": 6,
    # fine-tuning on targets
    "finetune": 7,
    # command-line programs
    "genesis.cli": 8,
}


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    hints = _type_checking_lines(tree)
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in hints:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in node.names]
        for name in names:
            if name.split(".")[0] in PACKAGES:
                target = _resolve(name, known)
                if target and target != module:
                    found.add(target)
    return found


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports_of(m, p, known) for m, p in known.items()}


def test_no_module_imports_a_higher_layer(graph: dict[str, set[str]]) -> None:
    upward = sorted(f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
                    for m, targets in graph.items() for t in targets if layer(t) > layer(m))
    assert not upward, "\n".join(upward)


def test_no_import_circles(graph: dict[str, set[str]]) -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    import sys

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, circles


def test_the_walk_sees_function_level_imports(graph: dict[str, set[str]]) -> None:
    # genesis.training.pretrain imports the data kinds and methods only through the recipe, but
    # the recipe imports both at module level and the evaluation at function level: all are edges
    assert "genesis.data.kinds" in graph["genesis.training.recipe"]
    assert "genesis.training.evaluate" in graph["genesis.training.pretrain"]
