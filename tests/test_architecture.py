"""The layer rule of docs/architecture.md: a module under augment/ imports only packages of lower layers (or its
own package), never a peer's or a higher layer's. Every import counts, at any depth (function-level lazy imports
too), so the test reads the source with `ast` instead of importing it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "augment"

LAYERS: dict[str, int] = {
    "core": 0,
    "schemas": 0,  # JSON files only, read with importlib.resources
    "data": 1,
    "models": 2,
    "training": 3,
    "synthesis": 4,
    "filtering": 4,
    "runner": 5,
    "report": 6,
    "pipelines": 7,
    "cli": 8,
    "api": 8,  # augment/api.py: the Python API (augment.open_dataset), a peer of the CLI
    "__main__": 9,  # `python -m augment`: runs the CLI
}
"""Package (first name under augment) -> layer; peers share a layer. `augment` itself (its __version__) is below all."""


def _package_of(module: str) -> str | None:
    """'augment.data.fs' -> 'data'; None for `augment` itself and anything outside it."""
    parts = module.split(".")
    if parts[0] != "augment" or len(parts) == 1:
        return None
    return parts[1]


def _imported(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `tree`, at any depth, relative imports resolved."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name == "augment":  # `from augment import X`: X may be a package
                found += [(node.lineno, f"augment.{alias.name}") for alias in node.names
                          if (PACKAGE / alias.name).is_dir()]
                found.append((node.lineno, name))
            else:
                found.append((node.lineno, name))
    return found


def layer_violations(root: Path = PACKAGE) -> list[str]:
    """One line per import of a higher layer's or a peer's package: 'augment/x/y.py:12 imports augment.z (...)'."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        module = ".".join(rel.with_suffix("").parts)
        if module.endswith(".__init__"):
            module = module[: -len(".__init__")]
        own = _package_of(module) or ""
        if own not in LAYERS:
            if module != "augment":
                problems.append(f"{rel}: package augment.{own} has no layer in tests/test_architecture.py")
            continue
        for line, name in _imported(ast.parse(path.read_text(), str(path)), module):
            target = _package_of(name)
            if target is None or target == own:
                continue
            if target not in LAYERS:
                problems.append(f"{rel}:{line} imports {name}, whose package has no layer")
            elif LAYERS[target] >= LAYERS[own]:
                kind = "a peer" if LAYERS[target] == LAYERS[own] else "a higher layer"
                problems.append(f"{rel}:{line} imports {name} ({kind}: {target} is layer {LAYERS[target]}, "
                                f"{own} is layer {LAYERS[own]})")
    return problems


def test_every_module_imports_only_lower_layers():
    problems = layer_violations()
    assert not problems, "imports against docs/architecture.md's layers:\n" + "\n".join(problems)


def test_the_check_finds_an_upward_and_a_peer_import(tmp_path):
    root = tmp_path / "augment"
    for package, source in (("core", "from augment.data import fs\n"),
                            ("synthesis", "def f():\n    import augment.filtering.quality\n"),
                            ("runner", "from augment.synthesis import plan\nfrom . import other\n")):
        (root / package).mkdir(parents=True)
        (root / package / "m.py").write_text(source)
    assert layer_violations(root) == [
        "augment/core/m.py:1 imports augment.data (a higher layer: data is layer 1, core is layer 0)",
        "augment/synthesis/m.py:2 imports augment.filtering.quality (a peer: filtering is layer 4, synthesis is "
        "layer 4)",
    ]


def test_cli_help_imports_neither_torch_nor_ray():
    code = ("import sys, contextlib, io\n"
            "from augment.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "heavy = sorted(m for m in ('torch', 'ray', 'pyarrow', 'torchvision') if m in sys.modules)\n"
            "print(','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT)
    assert out.stdout.strip() == ""


def test_python_m_augment_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "augment", "--help"], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert out.returncode == 0 and "usage: augment" in out.stdout and "retrain" in out.stdout
