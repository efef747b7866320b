"""The package's shape: short functions, small modules, layers that only point down.

Rules (for every module of ``hdm_lightning/``):

- no function or method longer than 60 lines, its docstring not counted;
- no module longer than 400 lines;
- no import cycle between the package's modules (module-level imports; ``if TYPE_CHECKING:`` blocks excluded);
- no import of the package's own modules inside a function (a function-level import is for keeping an optional
  third-party dependency optional, nothing else);
- no private name (``_x``) of one module imported by another: what other modules use is public;
- the subpackages and top-level modules form the layers of ``LAYERS``: each may import only what lies in a lower
  layer, so no two packages depend on each other (a cycle between packages the module-level test cannot see).

``DEBT`` lists what broke a rule when the rules were written; it may only shrink: a new offender fails, and so does
an entry that no longer offends (remove it, so that it cannot come back unnoticed).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hdm_lightning"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400

# The layers, lowest first: a subpackage or top-level module of hdm_lightning (``hdm_lightning`` is the package's own
# __init__) may import only what lies in a lower layer. A new one goes where its imports put it; moving one up or
# down is a design decision, made here, in one place (docs/architecture.md will describe it).
LAYERS: list[set[str]] = [
    # plain helpers: torch maths, files, registries, bounds, statistics, the Trainer setup
    {"allocator", "bounds", "core", "errors", "io", "masks", "prepare", "registry", "signals", "stats", "targets"}
    | {"training_run"},
    {"config"},  # every config's schema, loader and checks (settings are read here, and only here)
    {"callbacks", "contract", "metrics", "schedules", "viz"},  # the method contract, metric families, schedules
    {"tables"},  # comparison tables
    {"distributed", "evaluation", "explainers", "models"},  # fits, classifiers, the metric suite
    {"baselines", "data"},  # baseline methods (some on the classifiers), datasets (with preprocessing)
    {"run"},  # an explain run: plan, batches, writer
    {"rescore", "train_prototype"},
    {"compare", "train_classifier"},  # the Python form of a comparison run; classifier training
    {"amortised"},  # amortised masks: a predictor trained on DM's loss, registered as a method and an initialiser
    {"cli", "hdm_lightning"},  # entry points
]

# What broke the rules when they were written (to be paid off; never added to).
DEBT: dict[str, set[str]] = {
    "long_functions": set(),
    "long_modules": set(),
    "function_level_imports": set(),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _docstring_lines(node: ast.AST) -> int:
    body = getattr(node, "body", [])
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first.end_lineno - first.lineno + 1
    return 0


def _functions(tree: ast.Module, module: str):
    """``(qualified name, node)`` of every function and method, nested ones included."""

    def walk(node: ast.AST, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}.{child.name}"
                yield name, child
                yield from walk(child, name)
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}.{child.name}")

    yield from walk(tree, module)


def _resolve(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[str]:
    """The package modules an import statement loads (``from a.b import c``: ``a.b.c`` if a module, else ``a.b``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "hdm_lightning"]
    base = node.module or ""
    if node.level:
        parts = module.split(".")
        parts = parts if is_package else parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*parts, base] if base else parts)
    if base.split(".")[0] != "hdm_lightning":
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and not _is_type_checking(node) or isinstance(node, ast.Try):
            yield from (n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom))


def long_functions() -> set[str]:
    out = set()
    for module, tree in TREES.items():
        for name, node in _functions(tree, module):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if node.end_lineno - start + 1 - _docstring_lines(node) > MAX_FUNCTION_LINES:
                out.add(name)
    return out


def long_modules() -> set[str]:
    return {m for m, p in MODULES.items() if len(p.read_text().splitlines()) > MAX_MODULE_LINES}


def function_level_imports() -> set[str]:
    """``"<innermost function>: <imported module>"`` for each own-module import inside a function."""
    found: dict[tuple[str, int, str], str] = {}
    for module, tree in TREES.items():
        is_package = MODULES[module].name == "__init__.py"
        for name, fn in _functions(tree, module):  # outer functions first: inner ones overwrite their lines
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    for target in _resolve(module, node, is_package):
                        found[module, node.lineno, target] = f"{name}: {target}"
    return set(found.values())


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for module, tree in TREES.items():
        is_package = MODULES[module].name == "__init__.py"
        targets = {t for n in _module_level_imports(tree) for t in _resolve(module, n, is_package)}
        graph[module] = {t for t in targets if t != module and t in MODULES}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize("rule", ["long_functions", "long_modules", "function_level_imports"])
def test_rule_debt_only_shrinks(rule):
    found = globals()[rule]()
    new = sorted(found - DEBT[rule])
    paid = sorted(DEBT[rule] - found)
    assert not new, f"{rule}: new offenders {new} (limits: functions {MAX_FUNCTION_LINES}, modules {MAX_MODULE_LINES})"
    assert not paid, f"{rule}: {paid} no longer offend: remove them from DEBT in {__file__}"


def test_no_import_cycle():
    assert import_cycles(import_graph()) == []


def package_of(module: str) -> str:
    """``hdm_lightning.explainers.engine`` -> ``explainers``; ``hdm_lightning.config`` -> ``config``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_violations(graph: dict[str, set[str]], layers: list[set[str]]) -> list[str]:
    """``"<module> -> <module>"`` for each import of a package in the same or a higher layer, or not listed."""
    rank = {p: i for i, layer in enumerate(layers) for p in layer}
    out = []
    for module, targets in sorted(graph.items()):
        a = package_of(module)
        for target in sorted(targets):
            b = package_of(target)
            if a != b and (a not in rank or b not in rank or rank[b] >= rank[a]):
                out.append(f"{module} -> {target}")
    return out


def private_imports() -> list[str]:
    """``"<module>: <name> from <module>"`` for each ``from hdm_lightning... import _name`` (module aliases aside)."""
    out = []
    for module, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hdm_lightning"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    if alias.name.startswith("_") and target not in MODULES:  # a private name, not a module
                        out.append(f"{module}: {alias.name} from {node.module}")
    return sorted(out)


def test_no_private_name_is_imported_across_modules():
    assert private_imports() == []


def test_layers_only_point_down():
    graph = import_graph()
    listed = {p for layer in LAYERS for p in layer}
    assert {package_of(m) for m in graph} <= listed, f"put {sorted({package_of(m) for m in graph} - listed)} in LAYERS"
    assert layer_violations(graph, LAYERS) == []


def test_the_checks_can_fail():
    """The detectors see what they are meant to see, on code written to break each rule."""
    cyclic = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(cyclic) == [["a", "b", "c"]]
    # a two-package cycle without a module cycle (explainers.mask_methods -> amortised.explainer -> explainers.engine)
    planted = {
        "hdm_lightning.explainers.mask_methods": {"hdm_lightning.amortised.explainer"},
        "hdm_lightning.amortised.explainer": {"hdm_lightning.explainers.engine"},
        "hdm_lightning.explainers.engine": set(),
    }
    assert import_cycles(planted) == []
    assert layer_violations(planted, LAYERS) == [
        "hdm_lightning.explainers.mask_methods -> hdm_lightning.amortised.explainer"
    ]
    src = "def f():\n    '''doc\n    string'''\n" + "    x = 1\n" * 61 + "    from hdm_lightning import core\n"
    tree = ast.parse(src)
    ((name, fn),) = list(_functions(tree, "m"))
    assert name == "m.f" and fn.end_lineno - fn.lineno + 1 - _docstring_lines(fn) == 63
    imports = [n for n in ast.walk(fn) if isinstance(n, ast.ImportFrom)]
    assert _resolve("m", imports[0], False) == ["hdm_lightning.core"]
