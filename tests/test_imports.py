"""The import graph of the project's own modules, read from the sources with ``ast``.

Every ``import`` counts, at module level or inside a function (and under ``TYPE_CHECKING``):
a cycle hidden in a function is still a cycle in the design. ``from pkg import name`` where
``pkg.name`` is a module counts as importing that module.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("models", "realtime", "training", "bench", "comostream")
# Import names that only exist in a checkout's root folder, never in an install.
TOP_LEVEL = ("models", "realtime", "training", "bench", "configs")


def package_dirs() -> dict[str, str]:
    """``{folder: dotted package}`` from pyproject.toml's setuptools package-dir mapping."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {folder: name for name, folder in mapping.items()}


def project_modules() -> dict[str, Path]:
    """``{dotted module name: source file}`` of every .py file in the project's parts."""
    dirs = package_dirs()
    out: dict[str, Path] = {}
    for part in PARTS:
        for path in sorted((ROOT / part).rglob("*.py")):
            rel = path.relative_to(ROOT / part).with_suffix("").parts
            names = [dirs[part], *rel]
            if names[-1] == "__init__":
                names.pop()
            out[".".join(names)] = path
    return out


def imported_names(path: Path, module: str) -> Iterator[tuple[str, int]]:
    """``(dotted name, line)`` of everything ``path`` imports; ``from pkg import a`` gives
    ``pkg.a`` (whether ``a`` is a module or a name in ``pkg``: the caller resolves it)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")
                if not is_package:
                    package.pop()
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([base] if base else [])])
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """``{module: project modules it imports}`` (default: the whole project)."""
    modules = project_modules() if modules is None else modules
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for name, _ in imported_names(path, module):
            # `import a.b.c` and `from a.b import c` (c not a module): the deepest project module
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first search)."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if cycle := visit(nxt):
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start):
            return cycle
    return None


def test_project_modules_import_each_other_without_a_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_inference_packages_never_import_training() -> None:
    graph = import_graph()
    bad = [
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module.startswith(("comostream.models", "comostream.realtime"))
        for target in targets
        if target.startswith("comostream.training")
    ]
    assert not bad, bad


def test_no_file_imports_a_checkout_folder_as_a_top_level_package() -> None:
    modules = project_modules()
    sources = [(name, path) for name, path in modules.items()]
    sources += [(f"tests.{p.stem}", p) for p in sorted((ROOT / "tests").glob("*.py"))]
    bad = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for module, path in sources
        for name, line in imported_names(path, module)
        if name.split(".")[0] in TOP_LEVEL
    ]
    assert not bad, bad


def test_tests_share_code_only_through_helpers_and_conftest() -> None:
    """Shared fixtures live in conftest.py and plain helpers in helpers.py, imported as
    ``helpers``; a test module never imports another test module (nor ``tests.*``)."""
    local = {p.stem for p in (ROOT / "tests").glob("*.py")}
    bad = [
        f"{path.name}:{line}: {name}"
        for path in sorted((ROOT / "tests").glob("*.py"))
        for name, line in imported_names(path, f"tests.{path.stem}")
        if name.split(".")[0] == "tests"
        or (name.split(".")[0] in local and name.split(".")[0] not in ("helpers", "ddp_worker"))
    ]
    assert not bad, bad


def test_the_graph_counts_function_level_relative_and_submodule_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg import b\n")
    (pkg / "b.py").write_text("from .c import VALUE\n")
    (pkg / "c.py").write_text("import pkg.a\nVALUE = 1\n")
    modules = {"pkg": pkg / "__init__.py", **{f"pkg.{m}": pkg / f"{m}.py" for m in "abc"}}
    graph = import_graph(modules)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    assert find_cycle({**graph, "pkg.c": set()}) is None
