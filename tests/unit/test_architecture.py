"""The rules of the package's layout (README, "Architecture"), checked on the source itself: no import
circle, config/ at the bottom (pure schema, no torch), objectives and strategies asked through their
registries rather than compared by name, and `recipe.run` on one screen."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "ptft_hf"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _owner(name: str) -> str:
    """The module a dotted import target lives in (`ptft_hf.a.b.name` -> `ptft_hf.a.b`)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(path: Path) -> set[str]:
    """ptft_hf modules that `path` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ptft_hf"):
            for alias in node.names:  # `from ptft_hf.objectives import clm` imports the module clm
                found.add(_owner(f"{node.module}.{alias.name}"))
        elif isinstance(node, ast.Import):
            found |= {_owner(a.name) for a in node.names if a.name.startswith("ptft_hf")}
    return found - {""}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _package_of(module: str) -> str:
    """A module's own package: `ptft_hf.objectives` for `ptft_hf.objectives.clm` (and for itself)."""
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def _cycles() -> list[list[str]]:
    """Import circles between modules; a package importing its own submodules (to register them) is
    no circle, since a submodule's import runs its package first anyway."""
    graph = {m: {t for t in targets if not (_package_of(t) == m)} for m, targets in GRAPH.items()}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_the_import_graph_has_no_circle():
    assert _cycles() == []


def test_config_imports_nothing_from_the_other_parts():
    outside = {m: sorted(t for t in GRAPH[m] if not t.startswith("ptft_hf.config"))
               for m in MODULES if m.startswith("ptft_hf.config")}
    assert {m: t for m, t in outside.items() if t} == {}


def test_importing_config_pulls_in_no_torch():
    code = ("import sys, pkgutil, importlib, ptft_hf.config as c\n"
            "for m in pkgutil.iter_modules(c.__path__): importlib.import_module('ptft_hf.config.' + m.name)\n"
            "from ptft_hf.config.compose import compose_config\n"
            "compose_config(['objective=sft', 'strategy=qlora', 'trainer=gpu'])\n"
            "heavy = sorted(n for n in ('torch', 'transformers', 'datasets', 'peft') if n in sys.modules)\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _registered_names() -> set[str]:
    return {yaml.safe_load(p.read_text())["name"] for group in ("objective", "strategy")
            for p in (REPO_ROOT / "conf" / group).glob("*.yaml")}


def _mentions_a_component(node: ast.AST) -> bool:
    return any(isinstance(n, (ast.Name, ast.Attribute, ast.Constant)) and
               any(word in str(getattr(n, "id", None) or getattr(n, "attr", None) or getattr(n, "value", ""))
                   for word in ("objective", "strategy"))
               for n in ast.walk(node))


def _names_in(node: ast.AST, names: set[str]) -> set[str]:
    """String constants in `node` (a constant or a tuple/list/set of them) that are component names."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return {i.value for i in items if isinstance(i, ast.Constant) and i.value in names}


def _name_comparisons(path: Path, names: set[str]) -> list[str]:
    """`x.objective.name == "clm"`-like comparisons, and tables keyed by component names."""
    hits, where = [], path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path.name
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_names_in(s, names) for s in sides) and any(_mentions_a_component(s) for s in sides if not _names_in(s, names)):
                hits.append(f"{where}:{node.lineno}")
        elif isinstance(node, ast.Dict) and len(_names_in(ast.Tuple(elts=[k for k in node.keys if k]), names)) >= 2:
            hits.append(f"{where}:{node.lineno} (a table keyed by objective/strategy names)")
    return hits


def test_no_module_outside_the_registries_compares_a_component_name():
    names = _registered_names()
    assert {"clm", "mlm", "sft", "classification", "full", "lora", "dora", "qlora"} <= names
    owned = ("ptft_hf/objectives/", "ptft_hf/strategies/")
    hits = [hit for path in sorted(PACKAGE.rglob("*.py")) if not str(path.relative_to(REPO_ROOT)).startswith(owned)
            for hit in _name_comparisons(path, names)]
    assert hits == []


def test_the_check_finds_a_comparison(tmp_path):
    """The test above can fail: it catches the forms the package used to have."""
    sample = tmp_path / "sample.py"
    sample.write_text('if cfg.objective.name == "clm": pass\nx = strategy in ("lora", "dora")\n'
                      'T = {"clm": 1, "sft": 2}\nif kind != "full": pass\n')
    hits = _name_comparisons(sample, {"clm", "sft", "lora", "dora", "full"})
    assert [h.split(":")[1].split()[0] for h in hits] == ["1", "2", "3"]


def test_every_option_yaml_names_a_registered_component():
    from ptft_hf.objectives import objective_names
    from ptft_hf.strategies import strategy_names

    for group, registered in (("objective", objective_names()), ("strategy", strategy_names())):
        in_yaml = sorted(yaml.safe_load(p.read_text())["name"] for p in (REPO_ROOT / "conf" / group).glob("*.yaml"))
        assert in_yaml == sorted(registered), group


def test_recipe_run_fits_one_screen():
    from ptft_hf import recipe

    lines, _ = inspect.getsourcelines(recipe.run)
    assert len(lines) <= 40, len(lines)
