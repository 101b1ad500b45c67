"""The layout's rules, read from the code itself (ARCHITECTURE.md draws them):
each package imports only the layers below it, no module imports itself
round a cycle, and importing the engine starts nothing."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import ROOT

ENGINE_BASE = {"engine.nn", "engine.io", "engine.paths", "engine.schedulers", "engine.blend"}
ENGINE_CORE = ENGINE_BASE | {"engine.models", "engine.pipeline", "engine.generation"}
# package -> the packages it may import (besides itself, the standard library and third parties)
ALLOWED = {
    "engine.paths": set(),
    "engine.nn": set(),
    "engine.io": set(),
    "engine.schedulers": set(),
    "engine.blend": set(),                        # two generations' noise and classes mixed (numpy only)
    "engine.models": {"engine.nn", "engine.io"},
    "engine": {"engine.models", "engine.nn"},     # engine/__init__.py: the public names
    "engine.pipeline": {"engine.models", "engine.schedulers", "engine.io", "engine.nn", "engine.blend"},
    "engine.generation": {"engine.pipeline", "engine.schedulers"},    # a request resolved: what the service, CLI and eval all build
    "engine.training": ENGINE_CORE,
    "engine.evaluation": ENGINE_CORE | {"engine.training"},
    "app": ENGINE_CORE,
    "bench": ENGINE_CORE | {"engine", "engine.training", "app"},
    "digitgen": ENGINE_CORE | {"engine.training", "engine.evaluation", "app", "bench"},
}
PACKAGES = ("engine", "app", "bench", "digitgen")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str:
    """The longest ALLOWED key that is the module or one of its parents."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in ALLOWED:
            return ".".join(parts[:n])
    raise AssertionError(f"{module} is in no known package")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every project module this file imports, at any depth (function-level
    imports included), resolved to absolute names. `from pkg import mod`
    counts as importing pkg.mod, not pkg."""
    me = module_name(path)
    base = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                mod = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                mod = node.module
            submodules = {f"{mod}.{a.name}" for a in node.names} & modules
            found |= submodules if submodules else {mod}
    return {m for m in found if m.split(".")[0] in PACKAGES}


def project_files():
    for pkg in PACKAGES:
        yield from sorted((ROOT / pkg).rglob("*.py"))


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in project_files()}
    return {m: {i for i in imports_of(p, set(modules)) if i in modules and i != m} for m, p in modules.items()}


def test_every_package_imports_only_the_layers_below_it():
    wrong = []
    for module, deps in graph().items():
        pkg = package_of(module)
        for dep in deps:
            other = package_of(dep)
            if other != pkg and other not in ALLOWED[pkg]:
                wrong.append(f"{module} imports {dep} ({pkg} may import {sorted(ALLOWED[pkg]) or 'nothing'})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for d in sorted(g[m]):
            if d.startswith(m + "."):  # a package's __init__ importing its own submodule is not a cycle
                continue
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_relative_and_function_level_imports():
    deps = graph()
    assert "engine.nn.ops" in deps["engine.nn.layers"]                 # from . import ops as F
    assert "engine.training.distill" in deps["digitgen.cli"]           # inside a function
    assert package_of("engine.nn.runtime") == "engine.nn" and package_of("engine") == "engine"


def test_importing_the_engine_starts_no_thread_and_leaves_blas_alone():
    code = textwrap.dedent("""
        import ctypes, glob, os, pkgutil, importlib, threading
        import numpy as np
        libs = glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "*openblas*.so*"))
        lib = ctypes.CDLL(libs[0]) if libs else None
        get = None
        for name in ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                     "openblas_get_num_threads64_", "openblas_get_num_threads"):
            get = get or (getattr(lib, name, None) if lib else None)
        before = (threading.active_count(), get() if get else None)
        import engine
        for m in pkgutil.walk_packages(engine.__path__, "engine."):
            importlib.import_module(m.name)
        after = (threading.active_count(), get() if get else None)
        from engine.nn import runtime
        print(before, after, runtime.threads(), get is not None)
        assert before == after, (before, after)
        assert runtime.threads() == 1
        runtime.configure(2)  # and configuring is what starts them
        print(threading.active_count() >= 1, get() if get else None)
    """)
    env = {"OPENBLAS_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    assert first.endswith("True"), "no OpenBLAS entry point found: the check would be empty"
    assert second.split()[-1] == "1"  # configure(2) made BLAS single-threaded
