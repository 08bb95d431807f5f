"""The house layout (docs/architecture.md): media and face at the bottom, then the networks, then the pipeline, then
data, training, evaluation, serving and the command line on top. Nothing below imports from above, and no modules
import each other, directly or round a longer loop. Imports inside functions count (most of the package imports
lazily); so do the subcommand modules the command line loads by name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "hyperlips"

# (layer, top-level names in it), bottom first; a name is a module or a sub-package of hyperlips
LAYERS = (
    ("bottom", {"errors", "config", "precision", "schedule", "bars", "media", "face"}),
    ("networks", {"models"}),
    ("pipeline", {"generator_io", "stages", "streaming", "runtime", "mouth", "pipeline", "sync_report", "live",
                  "options"}),
    ("top", {"data", "train", "eval", "serve", "demo", "cli"}),
)


def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    mods = {}
    for p in sorted(root.rglob("*.py")):
        parts = ("hyperlips",) + p.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file. ``from . import sub`` imports the module
    ``sub``, not its package."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def known(m: str) -> str | None:
        while m not in mods and "." in m:
            m = m.rsplit(".", 1)[0]
        return m if m in mods else None

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in mods]
            targets = subs if len(subs) == len(node.names) else [mod] + subs
        else:
            continue
        for t in targets:
            m = known(t) if t.split(".")[0] == "hyperlips" else None
            if m is not None and m != name:
                found.add(m)
    return found


def _graph() -> dict[str, set[str]]:
    from hyperlips import cli

    mods = _modules()
    # the package's own __init__ only names LipSync lazily for `from hyperlips import LipSync`: a facade, not a layer
    graph = {n: _imports(n, p, mods) for n, p in mods.items() if n != "hyperlips"}
    graph["hyperlips.cli"] |= set(cli._COMMAND_MODULES)  # loaded by name (importlib)
    return graph


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    if not top:
        return 0  # the package itself: __version__
    for i, (_, names) in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: not placed in any layer of tests/test_layout.py (add it where it belongs)")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_nothing_below_imports_from_above():
    graph = _graph()
    assert len(graph) > 100  # the whole package was read
    wrong = sorted(f"{a} ({LAYERS[_layer(a)][0]}) imports {b} ({LAYERS[_layer(b)][0]})"
                   for a, bs in graph.items() for b in bs if _layer(b) > _layer(a))
    assert not wrong, "\n".join(wrong)


def test_the_command_line_and_the_server_sit_on_top():
    graph = _graph()
    for top in ("hyperlips.cli", "hyperlips.serve"):
        users = sorted(a for a, bs in graph.items() for b in bs
                       if (b == top or b.startswith(top + ".")) and not (a == top or a.startswith(top + "."))
                       and a != "hyperlips.cli")
        assert not users, f"{top} is imported by {users}"


def test_no_modules_import_each_other():
    cycles = _cycles(_graph())
    assert not cycles, "import loops: " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("source, expect", [
    # a pair, a loop of three, and a module importing a package's submodule (no loop with the package)
    ({"a.py": "from . import b\n", "b.py": "def f():\n    from .a import x\n"}, [["hyperlips.a", "hyperlips.b"]]),
    ({"a.py": "import hyperlips.b\n", "b.py": "from .c import y\n", "c.py": "from hyperlips.a import z\n"},
     [["hyperlips.a", "hyperlips.b", "hyperlips.c"]]),
    ({"p/__init__.py": "from .q import r\n", "p/q.py": "from . import s\n", "p/s.py": ""}, []),
])
def test_the_loop_finder_finds_loops_however_they_are_written(tmp_path, source, expect):
    root = tmp_path / "hyperlips"
    for rel, text in source.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    mods = _modules(root)
    graph = {n: _imports(n, p, mods) for n, p in mods.items()}
    assert _cycles(graph) == expect


def test_the_api_keeps_its_types_for_type_checkers():
    """py.typed is shipped, yet `from hyperlips import LipSync` was Any to a type checker (a lazy module attribute with
    no declared type), `LipSync.sync`'s signature was erased by the decorator that runs one call at a time, and
    `stream` said nothing of what it yields."""
    import ast
    import typing

    import hyperlips
    from hyperlips.live import LiveFrame
    from hyperlips.pipeline import LipSync, _one_at_a_time

    tree = ast.parse(Path(hyperlips.__file__).read_text(encoding="utf-8"))
    checked = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    assert any("from .pipeline import LipSync" in ast.unparse(node) for node in checked)
    hints = typing.get_type_hints(_one_at_a_time)
    assert hints["fn"] == hints["return"] and typing.get_origin(hints["return"]) is not None  # Callable[P, R] in and out
    assert typing.get_type_hints(LipSync.stream)["return"] == typing.Iterator[LiveFrame]
    assert (Path(hyperlips.__file__).parent / "py.typed").is_file()


def test_the_licence_and_the_weights_terms_travel_with_the_package():
    """Declared Apache-2.0, yet no licence text was in the repository, the sdist or the wheel, and the shipped weights'
    research-only terms were only in docs/starter.md, which the wheel leaves out."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads TOML")

    root = PACKAGE.parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0" and set(project["license-files"]) == {"LICENSE", "NOTICE"}
    assert "Apache License" in (root / "LICENSE").read_text() and "Version 2.0" in (root / "LICENSE").read_text()
    notice = (root / "NOTICE").read_text()
    assert "research" in notice and "HYPERLIPS_NO_SHIPPED" in notice
    assert (PACKAGE / "models" / "weights").is_dir() and "models/weights" in notice
