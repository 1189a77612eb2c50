"""The layering rule (docs/DESIGN.md), checked on the import graph of the source tree.

Layers, top to bottom: commands -> jobs -> stages -> backbones -> ops -> kernels -> runtime. A
module may import its own layer and any lower layer, never one above; within the stage layer a
stage imports only the stages listed for it in ``STAGE_USES`` (the pipeline order). Every import counts: module-level, inside functions, ``TYPE_CHECKING`` blocks, and
``importlib.import_module`` of a literal module name. Modules must not import each other in a
circle either (inside a package too). ``spar_fast/__init__.py``, the facade that names the
public API lazily by string, is the one module above every layer.

A new package: add it to ``LAYERS`` (and, for a stage, to ``STAGE_USES``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = (  # (layer, units): a unit is a package or a top-level module of spar_fast
    ("commands", ("spar_fast.commands", "spar_fast.cli", "spar_fast.__main__")),
    ("jobs", ("spar_fast.jobs",)),
    ("stages", ("spar_fast.data", "spar_fast.teacher", "spar_fast.store", "spar_fast.train",
                "spar_fast.segmentation", "spar_fast.evaluation", "spar_fast.world", "spar_fast.probe")),
    ("backbones", ("spar_fast.backbones",)),
    ("ops", ("spar_fast.ops",)),
    ("kernels", ("spar_fast.kernels",)),  # Triton sources in kernels/, loaded by the ops
    ("runtime", ("spar_fast.runtime", "spar_fast.errors", "spar_fast.atomic", "spar_fast.lock",
                 "spar_fast.options", "spar_fast._backend", "spar_fast.jsonfile")),
)
STAGE_USES = {  # stage -> the stages it may import (each earlier in the pipeline)
    "spar_fast.data": (),
    "spar_fast.store": ("spar_fast.data",),
    "spar_fast.teacher": ("spar_fast.data",),
    "spar_fast.train": ("spar_fast.data", "spar_fast.store"),
    "spar_fast.segmentation": ("spar_fast.data", "spar_fast.teacher"),
    "spar_fast.evaluation": ("spar_fast.data", "spar_fast.segmentation"),
    "spar_fast.world": ("spar_fast.data", "spar_fast.segmentation"),  # scenes, their backbone
    "spar_fast.probe": ("spar_fast.data", "spar_fast.segmentation", "spar_fast.evaluation"),
}
FACADE = "spar_fast"


def tree_sources() -> dict[str, tuple[str, bool]]:
    """``{module name: (source, is_package)}`` of spar_fast/ and kernels/ (as spar_fast.kernels)."""
    out = {}
    for folder, prefix in ((ROOT / "spar_fast", "spar_fast"), (ROOT / "kernels", "spar_fast.kernels")):
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            package = parts[-1] == "__init__"
            name = ".".join([prefix] + (parts[:-1] if package else parts))
            out[name] = (path.read_text(encoding="utf-8"), package)
    return out


def imports(name: str, source: str, package: bool, known: set[str]) -> set[str]:
    """Every spar_fast module ``name`` imports, wherever the import statement is."""
    base = name if package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.split(".")[:len(base.split(".")) - (node.level - 1)]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:  # ``from pkg import submodule`` imports the submodule
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in known else module)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return {m for m in found if m == FACADE or m.startswith(FACADE + ".")}


def unit_of(module: str) -> tuple[int, str] | None:
    """``(layer index, unit)`` of a module: the longest unit that is it or contains it."""
    best = None
    for index, (_, units) in enumerate(LAYERS):
        for unit in units:
            if (module == unit or module.startswith(unit + ".")) and (best is None or len(unit) > len(best[1])):
                best = (index, unit)
    return best


def allowed(src: str, dst: str) -> bool:
    (src_layer, src_unit), (dst_layer, dst_unit) = unit_of(src), unit_of(dst)
    if src_unit == dst_unit or dst_layer > src_layer:
        return True
    if dst_layer < src_layer:
        return False
    return dst_unit in STAGE_USES[src_unit] if src_unit in STAGE_USES else True


def violations(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """Every breach of the rule in ``sources`` (module -> (source, is_package)), as text."""
    known = set(sources)
    graph = {name: imports(name, src, pkg, known) for name, (src, pkg) in sources.items()}
    out = []
    for name, targets in sorted(graph.items()):
        if name == FACADE:
            continue
        if unit_of(name) is None:
            out.append(f"{name}: not in any layer (add it to LAYERS in tests/test_layering.py)")
            continue
        for target in sorted(targets):
            if target == FACADE:
                out.append(f"{name} imports the facade spar_fast (import the defining module)")
            elif target in known and unit_of(target) and not allowed(name, target):
                out.append(f"{name} -> {target}: {LAYERS[unit_of(name)[0]][0]} may not import "
                           f"{unit_of(target)[1]} ({LAYERS[unit_of(target)[0]][0]})")
    return out + cycles({n: {t for t in ts if t in known and t != n} for n, ts in graph.items()})


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """One line per import circle (strongly connected set of two or more modules)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                found.append("import circle: " + " <-> ".join(sorted(members)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_tree_follows_the_layering():
    assert violations(tree_sources()) == []


def test_every_stage_is_in_the_stage_table():
    stages = dict(LAYERS)["stages"]
    assert set(STAGE_USES) == set(stages)
    for uses in STAGE_USES.values():
        assert set(uses) <= set(stages)


def _with(module: str, source: str, package: bool = False):
    sources = tree_sources()
    sources[module] = (source, package)
    return violations(sources)


@pytest.mark.parametrize("module,source,words", [
    # a stage reaching up into a job, from inside a function (the old store -> extraction re-export)
    ("spar_fast.store.extra", "def f():\n    from ..jobs.extract import extract_features\n",
     "spar_fast.store.extra -> spar_fast.jobs.extract"),
    # a stage parsing arguments through the commands' helpers
    ("spar_fast.segmentation.extra", "from ..commands.args import add_device\n",
     "stages may not import spar_fast.commands"),
    # a stage importing a stage that is not before it in the pipeline
    ("spar_fast.store.extra", "from spar_fast.teacher import teacher_features\n",
     "spar_fast.store.extra -> spar_fast.teacher"),
    # an op reaching up by a literal module name
    ("spar_fast.ops.extra", "import importlib\nimportlib.import_module('spar_fast.backbones.registry')\n",
     "spar_fast.ops.extra -> spar_fast.backbones.registry"),
    # a module outside every layer
    ("spar_fast.extra", "", "not in any layer"),
    ("spar_fast.ops.extra", "from ..backbones import Backbone\n", "ops may not import spar_fast.backbones"),
    ("spar_fast.kernels.extra", "import spar_fast.runtime\nfrom spar_fast.ops import seg_head\n",
     "kernels may not import spar_fast.ops"),
])
def test_an_upward_import_fails(module, source, words):
    found = _with(module, source)
    assert any(words in line for line in found), found


def test_an_import_circle_fails():
    """Two modules of one package importing each other (function-local on one side)."""
    sources = tree_sources()
    sources["spar_fast.segmentation.a"] = ("from .b import x\n", False)
    sources["spar_fast.segmentation.b"] = ("def x():\n    from .a import y\n", False)
    found = violations(sources)
    assert "import circle: spar_fast.segmentation.a <-> spar_fast.segmentation.b" in found, found


def test_runtime_importing_ops_fails():
    sources = tree_sources()
    source, package = sources["spar_fast._backend"]
    sources["spar_fast._backend"] = (source + "\n\ndef f():\n    from .ops import compiled\n", package)
    assert any("spar_fast._backend -> spar_fast.ops.compiled" in v for v in violations(sources))
