"""The package layout: mirror_sfm never imports gtgen, and no module of either imports itself back.

Imports are read with `ast` from the source (every `import` and `from ... import`, function-local ones included),
so an import hidden inside a function counts as much as one at the top of a file. An edge goes to the module
named (`from pkg import sub` to `pkg.sub` when `sub` is a module); the implicit import of a parent package's
`__init__` is not an edge, as in import-linter.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("mirror_sfm", "gtgen")


def _modules() -> dict[str, Path]:
    """Dotted name -> source file of every module under the packages (a package is its __init__.py)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of `known` (or outside packages, by their dotted name) that the module `name` imports."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_mirror_sfm_never_imports_gtgen():
    offenders = sorted(
        f"{mod} imports {target}"
        for mod, targets in _graph().items()
        if mod.split(".")[0] == "mirror_sfm"
        for target in targets
        if target.split(".")[0] == "gtgen"
    )
    assert not offenders, "\n".join(offenders)


def test_no_import_cycle():
    graph = _graph()
    edges = {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_graph_sees_function_local_imports(tmp_path):
    """The checker itself: a function-local relative import is an edge."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from .other import thing\n    import gtgen.cli\n")
    assert _imports("pkg.m", src, {"pkg.other"}) == {"pkg.other", "gtgen.cli"}


def test_labels_reader_is_shared():
    """gtgen's reader names are mirror_sfm.labels' own functions (one reader, re-exported for old imports)."""
    from gtgen import gl3d, masks, ratios, triplets
    from mirror_sfm import labels, scene_eval

    assert gl3d.read_ratios is labels.read_ratios and gl3d.read_mask_bin is labels.read_mask_bin
    assert gl3d.read_image_list is labels.read_image_list and masks.read_mask_png is labels.read_mask_png
    assert triplets.read_manifest is labels.read_manifest and ratios.combined_ratios is labels.combined_ratios
    assert scene_eval.load_scene_labels is labels.load_scene_labels
