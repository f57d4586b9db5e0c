"""The package layout holds: imports go one way, no cycles, no re-exports, every dependency used.

Read from the source with `ast` (nothing is imported), so a violation fails here with the
offending import named, instead of surfacing later as a circular-import error or a shim.
"""

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tf_netvlad"
REPO = PACKAGE.parent

# Level of each part of the package, from the command line down to the layers (README "Layout").
# A module may import its own subpackage and any part of a lower level, nothing else.
LEVELS = {
    "__init__": 9, "__main__": 9,
    "cli": 8,
    "demo": 7,
    "training": 6, "retrieval": 6,
    "evaluation": 5, "export": 5, "convert": 5,
    "models": 4,
    "data": 3, "search": 3,
    "layers": 2,
    "registration": 1,
    "defaults": 0, "version": 0,
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        yield ".".join(rel.parts), path


def _part(module):
    """`tf_netvlad.data.places` -> "data"; `tf_netvlad.defaults` -> "defaults"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _resolve(name):
    """The module file an import names: `tf_netvlad.data.places.PlaceSplit` -> `tf_netvlad.data.places`."""
    parts = name.split(".")
    while parts:
        candidate = REPO.joinpath(*parts)
        if candidate.with_suffix(".py").is_file():
            return ".".join(parts)
        if (candidate / "__init__.py").is_file():
            return ".".join(parts) + ".__init__"
        parts.pop()
    raise AssertionError(f"import of {name!r} names no module of the package")


def _imports(path):
    """Every tf_netvlad module `path` imports, at any depth (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tf_netvlad":
            found |= {_resolve(f"{node.module}.{alias.name}") for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {_resolve(a.name) for a in node.names if a.name.split(".")[0] == "tf_netvlad"}
    return found


GRAPH = {name: _imports(path) for name, path in _modules()}


def test_every_part_of_the_package_has_a_level():
    assert {_part(m) for m in GRAPH} == set(LEVELS)


def test_imports_go_one_way_from_the_cli_down_to_the_layers():
    wrong = []
    for module, imported in GRAPH.items():
        for target in imported:
            here, there = _part(module), _part(target)
            if here != there and LEVELS[there] >= LEVELS[here]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles_between_modules():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not cycles


@pytest.mark.parametrize("init", sorted(p for p in PACKAGE.glob("*/__init__.py")), ids=lambda p: p.parent.name)
def test_subpackage_inits_are_docstrings_only(init):
    """No facades: a name is imported from the module that defines it (only tf_netvlad/__init__ gathers)."""
    body = ast.parse(init.read_text()).body
    assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)


# requirement name -> the module it provides
IMPORT_NAMES = {"faiss-cpu": "faiss", "pillow": "PIL"}


def test_every_runtime_requirement_is_used_by_the_package():
    """requirements-base.txt lists only what tf_netvlad itself needs (test-only packages: requirements-dev.txt)."""
    source = "\n".join(path.read_text() for _, path in _modules())
    unused = []
    for line in (REPO / "requirements-base.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        name = re.split(r"[<>=!\[ ]", line)[0]
        module = IMPORT_NAMES.get(name, name.replace("-", "_"))
        # an import, or a lookup by name (the optional TensorBoard callback checks find_spec)
        if not re.search(rf"(import {module}\b|from {module}\b|find_spec\(\"{module}\"\))", source):
            unused.append(name)
    assert not unused


def test_public_api_modules_and_registration_modules_exist():
    import tf_netvlad
    from tf_netvlad.registration import KERAS_CLASS_MODULES

    modules = defaultdict(list)
    for name, module in tf_netvlad._PUBLIC.items():
        modules[module].append(name)
    for module in list(modules) + list(KERAS_CLASS_MODULES):
        assert module in GRAPH, module
