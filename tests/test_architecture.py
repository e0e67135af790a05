"""The package's shape: layers that import downwards only, no import cycle, small modules, and a
public API that is what __all__ says."""

import ast
from pathlib import Path

import tadlora

ROOT = Path(tadlora.__file__).parent
LAYERS = ["data", "core", "engines", "runs", "study"]  # bottom to top; cli and __init__ on top
MAX_LINES = 300


def modules() -> dict[str, Path]:
    """'core.lora' -> its file, for every module of the package."""
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        out[".".join(p for p in parts if p != "__init__") or "__init__"] = f
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports, anywhere in the file (lazy imports included)."""
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    package = [] if name == "__init__" else package
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names = [f"{target}.{a.name}" if target else a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tadlora"):
            target = node.module.removeprefix("tadlora").lstrip(".")
            names = [f"{target}.{a.name}".lstrip(".") for a in node.names]
        elif isinstance(node, ast.Import):
            target = ""
            names = [a.name.removeprefix("tadlora.") for a in node.names
                     if a.name.startswith("tadlora.")]
        else:
            continue
        out |= {n for n in names if n in known} or ({target} & known)
    return out - {name}


def layer(name: str) -> int:
    top = name.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else len(LAYERS)


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_imports_point_down_the_layers():
    upward = [(a, b) for a, deps in graph().items() for b in deps if layer(b) > layer(a)]
    assert not upward, f"imports from a higher layer: {upward}"


def test_no_import_cycle():
    deps, state, cycles = graph(), {}, []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for d in sorted(deps[m]):
            if state.get(d) == "open":
                cycles.append([*stack[stack.index(d):], d])
            elif d not in state:
                visit(d, [*stack, d])
        state[m] = "done"

    for m in sorted(deps):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_lazy_relative_and_absolute_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from . import a\ndef g():\n    from ..core import lora\n"
                 "    import tadlora.data.text\nfrom tadlora.study.report import x\n")
    known = {"engines.a", "core.lora", "study.report", "data.text"}
    assert imports("engines.m", f, known) == known
    assert [b for b in imports("engines.m", f, known) if layer(b) > layer("engines.m")] == \
        ["study.report"]


def test_no_module_over_the_size_limit():
    long = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    assert all(v <= MAX_LINES for v in long.values()), \
        {n: v for n, v in long.items() if v > MAX_LINES}


def test_public_api_is_all_and_importable():
    assert sorted(tadlora.__all__) == sorted(set(tadlora.__all__))
    for name in tadlora.__all__:
        assert getattr(tadlora, name) is not None
    assert callable(tadlora.run) and callable(tadlora.load_config)
