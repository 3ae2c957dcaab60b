"""The project's layers point one way: models ← tensor_analysis, data ← Search_CIFAR10, deploy, benchmarks.

Every import in every project module (top-level or inside a function) is checked against the layer
table below, so an upward import fails here with the file and line that adds it.
"""
import ast
import os

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PACKAGES = ("models", "tensor_analysis", "data", "Search_CIFAR10", "deploy", "benchmarks")
# what each package (or sub-package, longest prefix wins) may import from the project
ALLOWED = {
    "models": {"models"},
    "tensor_analysis": {"models", "tensor_analysis"},
    "data": {"models", "data"},
    "deploy": {"models", "tensor_analysis", "data", "deploy"},
    "Search_CIFAR10": {"models", "tensor_analysis", "data", "Search_CIFAR10"},
    # inside Search_CIFAR10: the run infrastructure and the reports sit below the searches
    "Search_CIFAR10.training": {"models", "tensor_analysis", "data", "Search_CIFAR10.training"},
    "Search_CIFAR10.reporting": {"models", "tensor_analysis", "data", "Search_CIFAR10.reporting"},
    "Search_CIFAR10.dnas": {"models", "tensor_analysis", "data", "Search_CIFAR10.training",
                            "Search_CIFAR10.reporting", "Search_CIFAR10.dnas"},
    "Search_CIFAR10.pretrain": {"models", "tensor_analysis", "data", "Search_CIFAR10.training",
                                "Search_CIFAR10.reporting", "Search_CIFAR10.pretrain"},
    "benchmarks": set(PACKAGES),
}
# the package's own root module (REPO_ROOT) is importable by all of Search_CIFAR10
ROOT_MODULES = {"Search_CIFAR10"}


def project_modules():
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for f in sorted(files):
                if f.endswith(".py"):
                    path = os.path.join(folder, f)
                    module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    yield path, module[:-len(".__init__")] if module.endswith(".__init__") else module


def imported_modules(path, module):
    tree = ast.parse(open(path).read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            yield node.lineno, target


def layer_of(module):
    return max((p for p in ALLOWED if module == p or module.startswith(p + ".")), key=len)


def test_imports_point_down():
    upward = []
    for path, module in project_modules():
        allowed = ALLOWED[layer_of(module)]
        for line, target in imported_modules(path, module):
            if target.split(".")[0] not in PACKAGES:
                continue  # the standard library and third-party packages
            if target in ROOT_MODULES and module.startswith("Search_CIFAR10"):
                continue
            if not any(target == a or target.startswith(a + ".") for a in allowed):
                upward.append(f"{os.path.relpath(path, REPO)}:{line} imports {target}")
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


@pytest.mark.parametrize("package", ["models", "tensor_analysis", "data", "deploy"])
def test_lower_layers_load_without_the_training_scripts(run_python, package):
    code = (f"import sys, pkgutil, importlib, {package}\n"
            f"for m in pkgutil.walk_packages({package}.__path__, '{package}.'):\n"
            f"    importlib.import_module(m.name)\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in ('Search_CIFAR10', 'benchmarks'))\n"
            f"assert not bad, bad\n")
    result = run_python(["-c", code])
    assert result.returncode == 0, result.stderr[-2000:]
