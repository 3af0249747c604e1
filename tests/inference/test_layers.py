"""The layers of inference/ (README, "For contributors"): every import of a module of the package, at module
level or inside a function, goes down the layers and never round in a cycle; PyTorch internals are
imported in inference/tracing.py only.

    core (the top-level modules)  <-  sampling/, variational/  <-  checks/  <-  reporting/  <-  __init__

sampling/ and variational/ are siblings: neither imports the other. Checked on the source with ``ast``,
and on synthetic sources that break each rule (the checker must see what it is meant to refuse)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "inference"
RANK = {"core": 0, "sampling": 1, "variational": 1, "checks": 2, "reporting": 3, "api": 4}
TORCH_INTERNALS = ("torch._", "torch.fx.experimental")


def layer(module: str) -> str:
    """``inference.checks.sbc`` -> "checks"; a top-level module -> "core"; the package itself -> "api"."""
    parts = module.split(".")
    if len(parts) == 1:
        return "api"
    return parts[1] if parts[1] in RANK else "core"


def sources() -> dict[str, str]:
    """``{module name: source}`` of every module of inference/ (a package is its ``__init__``)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path.read_text()
    return out


def imports(module: str, source: str, known) -> list[tuple[str, int]]:
    """``(imported module of inference, line)`` for every import statement anywhere in ``source``;
    ``from inference import x`` counts as ``inference.x`` where that is a module, else as the package."""
    package = module if module in known and any(k.startswith(module + ".") for k in known) else \
        module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in known else base, node.lineno))
    return [(name, line) for name, line in found if name == "inference" or name.startswith("inference.")]


def violations(modules: dict[str, str]) -> list[str]:
    """Every import against the layers, and every cycle, among ``modules`` ``{name: source}``."""
    known = set(modules)
    graph = {m: set() for m in modules}
    bad = []
    for module, source in modules.items():
        for target, line in imports(module, source, known):
            if target == module:
                continue
            graph[module].add(target)
            a, b = layer(module), layer(target)
            if module == "inference" or b == a:
                continue
            if RANK[b] >= RANK[a]:
                bad.append(f"{module}:{line} ({a}) imports {target} ({b})")
    # cycles: depth-first search over the import graph
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                bad.append("cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            elif n in graph and n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return bad


def test_every_import_goes_down_the_layers_without_cycles():
    modules = sources()
    assert {layer(m) for m in modules} == set(RANK)          # the layers exist as folders
    assert violations(modules) == []


@pytest.mark.parametrize("name, source, expected", [
    # the core reaching up to reporting, at module level and inside a function
    ("inference.target", "from inference.reporting import plots", "inference.target:1 (core) imports "
                                                                  "inference.reporting.plots (reporting)"),
    ("inference.target", "def f():\n    from inference.reporting.plots import plot_trace",
     "inference.target:2 (core) imports inference.reporting.plots (reporting)"),
    # siblings, relative imports, the public API
    ("inference.sampling.mcmc", "from ..variational import svi", "(sampling) imports inference.variational.svi"),
    ("inference.checks.ppc", "from .. import fit_svi", "inference.checks.ppc:1 (checks) imports inference (api)"),
])
def test_the_checker_refuses_an_import_up_the_layers(name, source, expected):
    modules = {m: "" for m in ("inference", "inference.target", "inference.reporting", "inference.reporting.plots",
                               "inference.sampling", "inference.sampling.mcmc", "inference.variational",
                               "inference.variational.svi", "inference.checks", "inference.checks.ppc")}
    assert violations(modules) == []
    modules[name] = source
    assert any(expected in v for v in violations(modules)), violations(modules)


def test_the_checker_finds_a_cycle_within_a_layer():
    modules = {"inference": "", "inference.target": "import inference.posterior",
               "inference.posterior": "def f():\n    from inference.target import Target"}
    assert violations(modules) == ["cycle: inference.posterior -> inference.target -> inference.posterior"]


def test_torch_internals_are_imported_in_tracing_only():
    touched = {m for m, source in sources().items()
               for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.Import, ast.ImportFrom))
               for name in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])
               if name.startswith(TORCH_INTERNALS)}
    assert touched == {"inference.tracing"}
    assert [m for m, source in sources().items() if "torch._" in source] == ["inference.tracing"]   # nor a reach-in
