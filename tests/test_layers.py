"""The package's import arrows run one way, and no package reaches into another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import nclab

ROOT = Path(nclab.__file__).parent

# what each package must never import (higher layers; see docs/development.md)
FORBIDDEN = {
    "metrics": {"train", "store", "sweep", "detect", "collect", "report", "integrations", "cli", "models"},
    "losses": {"train", "store", "sweep", "detect", "collect", "report", "integrations", "cli"},
    "models": {"train", "store", "sweep", "detect", "collect", "report", "integrations", "cli"},
    "data": {"train", "sweep", "detect", "collect", "report", "integrations", "cli"},
    "store": {"train", "sweep", "detect", "collect", "report", "integrations", "cli", "models", "metrics"},
    "train": {"sweep", "detect", "collect", "report", "integrations", "cli"},
    "detect": {"sweep", "report", "cli"},
    "collect": {"sweep", "report", "detect", "cli"},
    "report": {"train", "sweep", "detect", "cli"},
}


def _imports():
    for f in sorted(ROOT.rglob("*.py")):
        pkg = f.relative_to(ROOT).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nclab."):
                yield f, pkg, node.module, [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("nclab."):
                        yield f, pkg, a.name, []


def test_lower_layers_never_import_higher_ones_and_nothing_imports_cli():
    bad = []
    for f, pkg, module, _ in _imports():
        target = module.split(".")[1]
        if target in FORBIDDEN.get(pkg, ()) or (target == "cli" and pkg not in ("cli", "__main__")):
            bad.append(f"{f.relative_to(ROOT)} imports {module}")
    assert not bad, "\n".join(bad)


def test_no_package_imports_another_packages_private_names():
    bad = []
    for f, pkg, module, names in _imports():
        target = module.split(".")[1]
        if target == pkg:
            continue
        private = [p for p in module.split(".")[2:] if p.startswith("_")] + [n for n in names if n.startswith("_")]
        if private:
            bad.append(f"{f.relative_to(ROOT)} imports {module}: {private}")
    assert not bad, "\n".join(bad)
