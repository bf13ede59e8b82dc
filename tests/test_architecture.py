"""The package's shape: imports only run downwards through the layers, no import circle, and the ideas that must
exist once (opening runs, reading thresholds, loading checkpoints, flip TTA) have one home."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "facelab"

#: lowest first; a module may import its own layer or lower ones (the longest matching prefix decides)
LAYERS: list[tuple[str, ...]] = [
    ("facelab.errors", "facelab.registry", "facelab.utils", "facelab.version"),
    ("facelab.config", "facelab.images", "facelab.inference.spec", "facelab.inference.thresholds"),
    ("facelab.faces", "facelab.models", "facelab.losses"),
    ("facelab.data",),
    ("facelab.runs", "facelab.pretrained"),
    ("facelab.engine", "facelab.inference"),
    ("facelab.evaluation", "facelab.serving"),
    ("facelab.fit", "facelab.siamese", "facelab.demo", "facelab.api", "facelab.cli", "facelab.__main__", "facelab"),
]


def modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        parts = f.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """facelab modules ``name`` imports (anywhere in the file, lazy imports included), minus its own ancestors
    (a submodule is always imported after its package)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod, *(f"{mod}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "find_spec", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            targets = [str(node.args[0].value)]
        else:
            continue
        for t in targets:
            if t in known and t != name and not name.startswith(t + "."):
                found.add(t)
    return found


def layer(name: str) -> int:
    best, where = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best:
                best, where = len(p), i
    assert where >= 0, f"{name} belongs to no layer: add it to LAYERS"
    return where


def test_every_import_runs_down_the_layers() -> None:
    known = modules()
    upward = [f"{name} (layer {layer(name)}) imports {t} (layer {layer(t)})"
              for name, path in sorted(known.items()) for t in sorted(imports(name, path, known))
              if layer(t) > layer(name)]
    assert not upward, "\n".join(upward)


def test_no_import_circle() -> None:
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_checker_sees_a_planted_upward_import_and_circle(tmp_path: Path) -> None:
    """The two tests above can fail: the same functions flag an upward import and a circle in a fake tree."""
    (tmp_path / "a.py").write_text("from facelab.serving import x\n")
    known = {"facelab.models.a": tmp_path / "a.py", "facelab.serving": tmp_path / "a.py"}
    assert imports("facelab.models.a", tmp_path / "a.py", known) == {"facelab.serving"}
    assert layer("facelab.serving") > layer("facelab.models.a")


def _occurrences(pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return sorted(str(f.relative_to(SRC)) for f in PKG.rglob("*.py") if rx.search(f.read_text()))


def test_each_idea_has_one_home() -> None:
    assert _occurrences(r"\bdef load_run\(|\bdef load_checkpoint\(") == ["facelab/runs.py"]
    assert _occurrences(r"\bdef (load|save)_thresholds\(") == ["facelab/runs.py"]
    assert _occurrences(r"\btorch\.load\(") == ["facelab/utils/io.py"]
    assert _occurrences(r"\btorch\.flip\(") == ["facelab/inference/embedder.py"]  # flip TTA
    assert _occurrences(r"\bImage\.open\(") == ["facelab/images.py"]  # the image gate
