"""The package's shape: no import cycles, and every import between parts of the package points down the data
flow (data -> partition -> model/render -> render.anchors -> train -> eval -> run -> export/view -> cli).
docs/architecture.md draws the same layers."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"momentumgs": "momentumgs", "viewer": "momentumgs_viewer"}  # folder -> import name

# Each part of the package and its layer: a part may import only parts of lower layers. A part is a top-level
# module or package (`partition`), or a module or package inside one (`partition.ssim`) that sits at a layer
# of its own; a module belongs to the longest part its dotted name starts with, so `partition.grid` is part of
# `partition` and `partition.ssim` is a part of its own, which may import `partition` but not the other way.
LAYERS = {
    "momentumgs": 0,  # the package's __init__: its version
    "errors": 0,
    "timing": 0,
    "metrics": 0,
    "memory": 0,
    "io_utils": 1,
    "config": 1,
    "lpips": 1,
    "checkpoint": 2,
    "data": 2,
    "partition": 3,
    "model": 3,
    "render": 3,
    "partition.preview": 4,
    "render.anchors": 4,  # renders the anchor model: above model/ and the rest of render/
    "merge": 4,
    "partition.ssim": 5,
    "train": 5,
    "eval": 6,
    "run_setup": 7,
    "run_console": 7,
    "prepare": 7,
    "run_launch": 8,
    "run": 8,
    "export": 8,
    "demo": 8,
    "report": 8,
    "viewer": 9,
    "cli": 10,
}


def modules() -> dict[str, Path]:
    """Import name -> file, for every module of the package and the viewer."""
    found = {}
    for folder, name in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [name, *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports, at the top or inside functions."""
    out = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            candidates = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        out |= {c for c in candidates if c in known and c != name}
    return out


def part_of(module: str) -> str:
    """The LAYERS key `module` belongs to: the longest one its name (below the package) starts with."""
    parts = module.split(".")
    if parts[0] == "momentumgs_viewer":
        return "viewer"
    if len(parts) == 1:
        return "momentumgs"
    inner = [".".join(parts[1:n]) for n in range(len(parts), 2, -1)]  # partition.ssim.x, partition.ssim
    return next((name for name in inner if name in LAYERS), parts[1])


def test_a_module_belongs_to_the_longest_part_that_names_it():
    assert part_of("momentumgs.partition.ssim") == "partition.ssim"
    assert part_of("momentumgs.partition.grid") == part_of("momentumgs.partition") == "partition"
    assert part_of("momentumgs") == "momentumgs" and part_of("momentumgs_viewer.app") == "viewer"


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycles():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()) or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_import_points_down_the_layers():
    edges = graph()
    parts = {part_of(m) for m in edges}
    assert parts <= LAYERS.keys(), f"parts without a layer: {sorted(parts - LAYERS.keys())}"
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in edges.items()
        for target in targets
        if part_of(module) != part_of(target) and LAYERS[part_of(target)] >= LAYERS[part_of(module)]
    )
    assert not wrong, "\n".join(wrong)


def test_no_reference_to_a_document_outside_the_repository():
    files = [
        p for folder in (*PACKAGES, "docs", "tools", "tests", "configs") for p in (ROOT / folder).rglob("*")
    ]
    files += [ROOT / "README.md"]
    outside = re.compile("DESIGN" + r"(\.md|\s*§)")  # in two parts so that this file does not match itself
    texts = {p: p.read_text() for p in files if p.is_file() and p.suffix in (".py", ".md", ".yaml")}
    hits = [str(p) for p, text in texts.items() if outside.search(text)]
    assert not hits, hits


MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60


def too_long(source: str) -> list[tuple[str, int, int]]:
    """(name, first line, lines) of each class over MAX_CLASS_LINES and each function or method over
    MAX_FUNCTION_LINES lines in `source`; a definition's lines run from its `def`/`class` line (decorators
    excluded) to its last line, nested definitions included."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            limit = MAX_CLASS_LINES
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            limit = MAX_FUNCTION_LINES
        else:
            continue
        lines = node.end_lineno - node.lineno + 1
        if lines > limit:
            out.append((node.name, node.lineno, lines))
    return out


def test_the_length_check_counts_a_definition_from_its_def_line():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 1))
    fits = f"@decorator\ndef f():\n{body}\n"  # 60 lines from `def`, 61 with the decorator
    assert too_long(fits) == []
    assert too_long(fits + "    return x0\n") == [("f", 2, MAX_FUNCTION_LINES + 1)]
    fields = "\n".join(f"    x{i} = {i}" for i in range(MAX_CLASS_LINES))
    assert too_long(f"class C:\n{fields}\n") == [("C", 1, MAX_CLASS_LINES + 1)]


def test_no_class_over_300_lines_and_no_function_over_60():
    found = sorted(
        (-lines, f"{path.relative_to(ROOT)}:{line} {name} ({lines} lines)")
        for path in modules().values()
        for name, line, lines in too_long(path.read_text())
    )
    offenders = [text for _, text in found]
    assert not offenders, f"{len(offenders)} too long:\n" + "\n".join(offenders)
