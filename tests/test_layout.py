"""The package's folders are its architecture: imports point down the floors, no module imports one
on a floor above it, no import cycle, the CUDA source is the one the GPU tests last ran, and a built
wheel ships every subpackage with the shipped data."""
import ast
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PKG = ROOT / "minivit"
# Floors from the ground up (docs/architecture.md): a module may import its own floor and those below.
FLOORS = [
    {"contract"},                              # the kernels' contract: names, signatures, caches; imports nothing
    {"gpu", "cpu"},                            # the kernels: import nothing of minivit but the contract
    {"backend", "config", "atomic_files", "machine"},   # the ground: every floor may use these
    {"layers"},
    {"data"},
    {"models"},
    {"io"},
    {"train"},
    {"tools"},
    {"cli"},
    {"__init__", "__main__"},                  # the package's face and `python -m minivit`
]


def floor_of(module):
    """minivit.layers.norm -> the floor index of 'layers'."""
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(FLOORS) if top in names)


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(module):
    """The minivit modules `module` imports, at the top or inside functions, resolved to module names."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("minivit"):
                continue
            for alias in node.names:  # `from . import cnn` names a module; `from .x import f` a name in x
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("minivit"))
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: imports_of(m) for m in MODULES}


def test_the_graph_was_read():
    assert "minivit.layers.attention" in GRAPH["minivit.models.block"]
    assert "minivit.backend" in GRAPH["minivit.layers.norm"]
    assert len(MODULES) > 40


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_floors(module):
    up = sorted(m for m in GRAPH[module] if floor_of(m) > floor_of(module))
    assert not up, f"{module} (floor {floor_of(module)}) imports from a floor above: {up}"


def test_the_kernels_import_nothing_of_minivit_but_the_contract():
    """gpu/ and cpu/ stand alone: a module there imports only its own folder's modules and the contract."""
    for folder in ("minivit.gpu", "minivit.cpu"):
        for m in MODULES:
            if m.startswith(folder):
                assert all(n.startswith(folder + ".") or n == "minivit.contract" for n in GRAPH[m]), (m, GRAPH[m])
    assert GRAPH["minivit.contract"] == set()


def test_no_import_cycle():
    """Depth-first search over the import graph; a back edge is a cycle, reported with its path."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if n.startswith("minivit.") and MODULES[n].name == "__init__.py" and n in stack:
                continue  # a subpackage's face importing its own modules is not a cycle between them
            if state.get(n) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(MODULES):
        if m not in state:
            visit(m)


def test_no_module_is_left_in_the_old_flat_places():
    flat = sorted(p.name for p in PKG.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "atomic_files.py", "backend.py", "config.py", "contract.py", "machine.py"], flat


# The SHA-256 of the CUDA source that minivit/gpu/kernels.py compiles: the text the GPU tests
# (tests/test_cuda_kernels.py) last ran, moved from the flat cuda_kernels.py unchanged. A change to a
# kernel must be run on a GPU before this figure is updated.
CUDA_SOURCE_SHA256 = "e488d38d2b6eb7fab97ab1482382b7508139f5b63d1b67c9a8d41de341e50b59"


def test_the_cuda_source_is_the_one_the_gpu_tests_ran():
    from minivit.gpu import kernels
    assert hashlib.sha256(kernels._SOURCE.encode()).hexdigest() == CUDA_SOURCE_SHA256
    assert len(kernels.name_expressions()) == 26       # 11 templates and cross-entropy, for float and double


def test_a_built_wheel_ships_every_subpackage_and_the_subset(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools in this environment")
    src = tmp_path / "src"   # what the build reads, copied, so no build output lands in the checkout
    shutil.copytree(PKG, src / "minivit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    wheel, = (tmp_path / "dist").glob("minivit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in MODULES:
        path = MODULES[module].relative_to(ROOT).as_posix()
        assert path in names, f"the wheel lacks {path}"
    assert "minivit/data/assets/cifar10-subset.tar.gz" in names
