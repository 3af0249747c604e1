"""pyproject.toml installs what the code imports, in the ranges it is tested on; one tqdm import style;
ArviZ reached through inference/azcompat.py."""

import ast
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
SOURCES = sorted((REPO / "zoo").rglob("*.py")) + sorted((REPO / "inference").rglob("*.py"))

# modules that still import arviz themselves (owned by other work when this test was written): move
# their calls into inference/azcompat.py and take them off this list
# (ppc.py and sbc_result.py: their figures, moved from plots.py; html_sections.py: moved from html.py)
ARVIZ_NOT_YET_BEHIND_COMPAT = {"compare.py", "diagnostics.py", "html.py", "html_sections.py", "plots.py", "ppc.py",
                               "report.py", "sbc_result.py", "select.py"}


def requirements(extras: bool) -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    if extras:
        reqs += [Requirement(r) for group in PROJECT["optional-dependencies"].values() for r in group]
    return {canonicalize_name(r.name): r for r in reqs}


def imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (nested imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_third_party_import_is_declared():
    declared = requirements(extras=True)
    distributions = metadata.packages_distributions()
    local = {"zoo", "inference"} | set(sys.stdlib_module_names)
    missing = {}
    for path in SOURCES:
        for name in imports(path) - local:
            dists = {canonicalize_name(d) for d in distributions.get(name, [name])}
            if not dists & set(declared):
                missing.setdefault(name, []).append(path.name)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_installed_versions_are_inside_the_declared_ranges():
    """The bounds say which releases the code (and its private touches of torch and Pyro) is tested on:
    the test suite must run on releases inside them."""
    declared = requirements(extras=False)
    for name in ("torch", "pyro-ppl", "arviz", "joblib"):
        version = metadata.version(name)
        assert declared[name].specifier.contains(version, prereleases=True), (name, version, declared[name])
    assert not declared["arviz"].specifier.contains("1.0.0")   # ArviZ 1.x has no InferenceData
    assert not declared["torch"].specifier.contains("99.0")    # upper bounds on the private touches
    assert not declared["pyro-ppl"].specifier.contains("99.0")


def test_one_tqdm_import_style():
    """``from tqdm import tqdm`` everywhere: a console bar that works in terminals, notebooks (as text)
    and forked NUTS chain workers alike, with no ipywidgets needed."""
    styles = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tqdm":
                styles[path.name] = node.module
            elif isinstance(node, ast.Import) and any(a.name.startswith("tqdm") for a in node.names):
                styles[path.name] = "import tqdm"
    assert styles and set(styles.values()) == {"tqdm"}, styles


def test_arviz_is_reached_through_azcompat():
    direct = {path.name for path in SOURCES if "arviz" in imports(path)}
    assert "azcompat.py" in direct
    assert direct - {"azcompat.py"} <= ARVIZ_NOT_YET_BEHIND_COMPAT, direct - {"azcompat.py"}
