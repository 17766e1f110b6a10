"""The layout holds: imports point down the data flow, and the README's layout is the tree.

Read from the source with `ast` (imports inside functions count too), so a lazy import that
climbs a layer fails here rather than in review.
"""

from __future__ import annotations

import ast
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


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module relative to songsight) of every songsight import in a file that runs
    (those under ``if TYPE_CHECKING:`` name types only and are left out)."""
    out: list[tuple[int, str]] = []

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

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
