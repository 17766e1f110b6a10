"""The layout holds: imports point down the data flow, and the README's layout is the tree.

Read from the source with `ast` (imports inside functions count too), so a lazy import that
climbs a layer fails here rather than in review.
"""

from __future__ import annotations

import ast
import graphlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "songsight"

# Lower numbers sit lower: a module may import its own unit or a unit of a lower rank only.
# eval.metrics and distill.loss are pure numpy/torch functions that anything may use.
RANK = {
    "errors": 0,
    "outputs": 1,
    "provenance": 1,
    "config": 1,
    "prompt_templates": 1,
    "eval.metrics": 1,
    "eval.statistics": 1,
    "taxonomy": 2,
    "inputs": 3,
    "data": 3,
    "encoders": 4,
    "distill.loss": 4,
    "index": 5,
    "baselines": 5,
    # the readouts: training, evaluation and search all use them, so none imports another
    "readout": 5.5,
    "jobs": 6,
    "distill": 6,
    "gallery": 7,  # embeds photos with jobs/; searched, served and driven from above
    "eval": 8,
    "retrieval": 8,
    "sim": 9,
    "serve": 9,
    "cli": 10,
    "testing": 10,
    "__main__": 10,
    "": 11,  # songsight/__init__.py, the public API
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _unit(module: str) -> str:
    """The `RANK` key a dotted name (relative to songsight) belongs to: the longest prefix."""
    parts = module.split(".") if module else []
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in RANK:
            return key
    return ""


class RunningCode(ast.NodeVisitor):
    """Visits the code that runs: what sits under ``if TYPE_CHECKING:`` names types only."""

    def visit_If(self, node: ast.If) -> None:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module relative to songsight) of every songsight import in a file that runs
    (those under ``if TYPE_CHECKING:`` name types only and are left out)."""
    out: list[tuple[int, str]] = []

    class Visitor(RunningCode):
        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module == "songsight" and node.level == 0:
                out.extend((node.lineno, alias.name) for alias in node.names)
            elif node.module and node.level == 0 and node.module.startswith("songsight."):
                out.append((node.lineno, node.module.removeprefix("songsight.")))

        def visit_Import(self, node: ast.Import) -> None:
            out.extend(
                (node.lineno, a.name.removeprefix("songsight."))
                for a in node.names
                if a.name.startswith("songsight.")
            )

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    return out


def _all_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "static" not in p.parts)


def test_every_module_has_a_rank():
    unknown = [_module_name(p) for p in _all_modules() if _unit(_module_name(p)) == ""]
    assert unknown == [""], f"modules outside every layer: {unknown}"


def test_imports_point_down_the_data_flow():
    climbing = []
    for path in _all_modules():
        mine = _unit(_module_name(path))
        for line, target in _imports(path):
            theirs = _unit(target)
            if theirs != mine and RANK[theirs] >= RANK[mine]:
                climbing.append(f"{path.relative_to(ROOT)}:{line} ({mine}) imports {target}")
    assert not climbing, "imports that climb a layer:\n" + "\n".join(climbing)


def test_the_index_never_imports_a_job():
    for path in (PACKAGE / "index").rglob("*.py"):
        assert not [t for _, t in _imports(path) if t.startswith("jobs")], path


def _layout_block() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Layout\n", 1)[1]
    match = re.search(r"```text\n(.*?)```", section, re.S)
    assert match, "README's Layout section has no ```text tree"
    return match.group(1)


def _layout_entries() -> set[str]:
    """Paths (relative to src/songsight) the README's tree names: ``pkg/`` lines list files."""
    entries: set[str] = set()
    current = ""
    for raw in _layout_block().splitlines():
        if not raw.startswith("  ") or not raw.strip():
            continue
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        first, *rest = line.split()
        if first.endswith("/"):
            current = first
            entries.add(first.rstrip("/"))
            names = rest
        else:
            current = ""
            names = [first, *rest]
        entries.update(current + n for n in names if n.endswith(".py"))
    return entries


def test_readme_layout_is_the_tree():
    named = _layout_entries()
    real = {str(p.relative_to(PACKAGE)) for p in _all_modules() if p.name != "__init__.py"}
    real |= {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*")
        if p.is_dir() and (p / "__init__.py").is_file() and "static" not in p.parts
    }
    real.add("__init__.py")
    assert sorted(named - real) == [], "the README names modules that do not exist"
    assert sorted(real - named) == [], "modules missing from the README's layout"


@pytest.mark.parametrize("limit", [420])
def test_no_module_past_the_limit(limit):
    long = {
        str(p.relative_to(ROOT)): n
        for p in _all_modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > limit
    }
    assert not long, f"modules past ~400 lines: {long}"


ENCODER_CLASSES = {
    "BioLingualEncoder", "BioCLIPEncoder", "DistilledEncoder", "FusedAudioEncoder",
    "OnnxAudioEncoder", "OnnxImageEncoder", "OnnxDistilledEncoder", "OnnxFusedEncoder",
}  # fmt: skip


def test_only_the_factory_builds_encoders():
    """Jobs ask `songsight.encoders.runtime` for an encoder (the fastest runtime the machine
    allows, one log line saying which); nothing outside `encoders/` builds one itself."""
    built = []
    for path in _all_modules():
        if "encoders" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in ENCODER_CLASSES:  # fmt: skip
                built.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not built, "encoders built outside the factory:\n" + "\n".join(built)


def _dotted(path: Path) -> str:
    name = _module_name(path)
    return f"songsight.{name}" if name else "songsight"


def _imported_modules(path: Path, name: str, modules: set[str]) -> dict[str, int]:
    """{songsight module ``name`` imports: first line}: every import that runs (function-level
    ones included; ``from pkg import sub`` counts as importing ``pkg.sub`` when that is a
    module), relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges: dict[str, int] = {}

    class Visitor(RunningCode):
        def visit_Import(self, node: ast.Import) -> None:
            for a in node.names:
                if a.name in modules:
                    edges.setdefault(a.name, node.lineno)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for a in node.names:
                target = f"{source}.{a.name}"
                target = target if target in modules else source
                if target in modules:
                    edges.setdefault(target, node.lineno)

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    edges.pop(name, None)
    return edges


def _module_graph() -> dict[str, dict[str, int]]:
    """module -> {songsight module it imports: line} (`_imported_modules`)."""
    modules = {_dotted(p): p for p in _all_modules()}
    return {name: _imported_modules(path, name, set(modules)) for name, path in modules.items()}


def test_no_import_cycles():
    """No module reaches itself through imports, function-level ones and those inside one
    package included (`graphlib` finds a cycle; each is reported with its import lines)."""
    graph = _module_graph()
    cycles = []
    while True:
        try:
            graphlib.TopologicalSorter({m: set(e) for m, e in graph.items()}).prepare()
            break
        except graphlib.CycleError as err:
            # graphlib lists each node before the one that imports it: read it backwards
            cycle = err.args[1][::-1]
            edges = (f"{a}:{graph[a][b]}" for a, b in zip(cycle, cycle[1:], strict=False))
            cycles.append(" -> ".join([*edges, cycle[-1]]))
            del graph[cycle[0]][cycle[1]]  # break it and look for the next one
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_module_imports_another_modules_private_name():
    """`from songsight.x import _name` couples two modules through something one of them
    promised no one: make it public there, or move the code."""
    private = []
    for path in _all_modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("songsight")):  # fmt: skip
                names = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]  # fmt: skip
                if names:
                    private.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}: {names}")
    assert not private, f"{len(private)} private imports across modules:\n" + "\n".join(private)
