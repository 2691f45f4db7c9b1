"""The house rules that code can check: no import cycle among deepsound_rt's modules at module
level, and the SDK does not import rich (only the CLI's renderer does)."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deepsound_rt"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: module level, inside try/if blocks, but not
    under ``if TYPE_CHECKING`` (and not inside functions or classes)."""
    found = []

    def visit(statements):
        for node in statements:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                    visit(block)

    visit(tree.body)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the deepsound_rt modules it imports at module level (a package's __init__ counts
    as imported with any of its submodules, except the packages the module itself lies in)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in top_level_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                bases = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                bases = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for base in bases:
                parts = base.split(".")
                for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
                    candidate = ".".join(parts[:i])
                    # a module's own packages are always imported before it
                    if candidate in modules and candidate != name and not name.startswith(candidate + "."):
                        targets.add(candidate)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_level_import_cycle():
    graph = import_graph()
    assert "deepsound_rt.engine" in graph and "deepsound_rt.kernels" in graph["deepsound_rt.models.alias_free"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_kernels_never_import_the_models():
    assert not any(target.startswith("deepsound_rt.models") for target in import_graph()["deepsound_rt.kernels"])


def test_only_the_cli_renderer_imports_rich():
    importers = {module_name(path) for path in PACKAGE.rglob("*.py")
                 if any(isinstance(node, (ast.Import, ast.ImportFrom)) and "rich" in
                        ([a.name.split(".")[0] for a in node.names] if isinstance(node, ast.Import)
                         else [(node.module or "").split(".")[0]])
                        for node in ast.walk(ast.parse(path.read_text())))}
    assert importers == {"deepsound_rt.console"}


def test_running_the_engine_imports_no_rich_from_deepsound_rt():
    """Third-party packages may import rich (httpx does, under transformers); deepsound_rt must not."""
    script = textwrap.dedent("""
        import builtins
        original = builtins.__import__
        culprits = []

        def watch(name, globals=None, *args, **kwargs):
            importer = (globals or {}).get("__name__", "")
            if name.split(".")[0] == "rich" and importer.startswith("deepsound_rt"):
                culprits.append(importer)
            return original(name, globals, *args, **kwargs)

        builtins.__import__ = watch
        import deepsound_rt
        from deepsound_rt.engine import Engine
        from deepsound_rt.io.sample import sample_clip_path

        engine = Engine(preset="dev", num_steps=1)
        engine.generate(sample_clip_path(), duration=1.0)
        engine.run(sample_clip_path(), judge="always", duration=1.0, progress=lambda event: None)
        assert not culprits, culprits
        print("no rich from deepsound_rt")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "no rich from deepsound_rt" in done.stdout, done.stderr[-2000:]
