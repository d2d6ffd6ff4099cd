"""The layout docs/architecture.md describes: its layers (read from its table), no import cycle
among dsw_ray's modules (lazy imports inside functions included), and no module of the package
importing benchmark code."""

import ast
import os
import re

from tests.conftest import ROOT

PACKAGE = os.path.join(ROOT, "dsw_ray")


def module_name(path: str) -> str:
    relative = os.path.relpath(path, ROOT).removesuffix(".py").replace(os.sep, ".")
    return relative.removesuffix(".__init__")


def imports() -> dict[str, set[str]]:
    """Module -> the dsw_ray modules it imports anywhere in its file."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                modules[module_name(os.path.join(folder, name))] = os.path.join(folder, name)
    graph = {}
    for module, path in modules.items():
        found = set()
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # "from dsw_ray import columns" imports the module dsw_ray.columns (and runs the
                # package's __init__ first, which Python has done by then); "from dsw_ray.score
                # import weigh" imports dsw_ray.score.
                for alias in node.names:
                    name = f"{node.module}.{alias.name}"
                    found.add(name if name in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[module] = {name for name in found if name in modules} - {module}
    return graph


def test_no_module_of_dsw_ray_is_in_an_import_cycle():
    graph = imports()
    assert "dsw_ray.pipeline" in graph and "dsw_ray.config" in graph["dsw_ray.pipeline"]
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def layers() -> dict[str, int]:
    """Each module (or package, ``tasks``) that docs/architecture.md's table places -> its
    layer, 0 for the lowest (the table lists the highest first)."""
    with open(os.path.join(ROOT, "docs", "architecture.md")) as f:
        rows = [line for line in f if line.startswith("| ") and not line.startswith(("| layer", "| ---"))]
    assert len(rows) >= 4, "docs/architecture.md has no layer table"
    return {
        name: rank
        for rank, row in enumerate(reversed(rows))
        for name in re.findall(r"`([a-z_]+)(?:\.py|/)`", row.split("|")[2])
    }


def test_each_module_imports_only_from_its_layer_or_below():
    placed = layers()
    assert placed["pipeline"] > placed["generate"] > placed["config"]

    def layer(module: str) -> int:
        # dsw_ray.tasks.custom is the package tasks/; the package and its __main__ are the CLI's.
        top = (module.split(".") + ["cli"])[1]
        top = "cli" if top == "__main__" else top
        assert top in placed, f"docs/architecture.md's table does not place {module}"
        return placed[top]

    upward = [
        f"{module} -> {target}"
        for module, targets in sorted(imports().items())
        if module != "dsw_ray"  # the package's lazy public names reach every layer by design
        for target in sorted(targets)
        if layer(target) > layer(module)
    ]
    assert not upward, "imports from a higher layer: " + ", ".join(upward)


def test_the_engine_never_imports_benchmark_code():
    """The benchmarks are scripts in benchmarks/, outside the package; the CLI's ``bench`` loads
    them from the clone by name, with no import statement."""
    scripts = {name.removesuffix(".py") for name in os.listdir(os.path.join(ROOT, "benchmarks")) if name.endswith(".py")}
    assert {"dsw_bench", "gpu_cost", "gpu_proof"} <= scripts
    for folder, _, files in os.walk(PACKAGE):
        for name in (n for n in files if n.endswith(".py")):
            with open(os.path.join(folder, name)) as f:
                tree = ast.parse(f.read())
            imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
            imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
            assert not imported & (scripts | {"benchmarks"}), os.path.join(folder, name)
