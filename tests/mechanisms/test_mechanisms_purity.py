"""mechanisms/ is a pure library: no web framework, database or service imports, and no
noise from numpy.random or the random module."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[2] / "mechanisms"
ALLOWED_THIRD_PARTY = {"numpy", "scipy", "diffprivlib", "dp_accounting"}
FORBIDDEN = {"flask", "sqlalchemy", "privacy_api", "privacy_client", "apiflask"}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_library_modules_import_only_the_allowed_packages() -> None:
    modules = sorted(LIBRARY.glob("*.py"))
    assert len(modules) >= 8
    for path in modules:
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in FORBIDDEN, f"{path.name} imports {name}"
            assert top in ALLOWED_THIRD_PARTY or top in sys.stdlib_module_names, (
                f"{path.name} imports {name}, which is neither stdlib nor an allowed package"
            )


def test_noise_never_comes_from_numpy_random_or_the_random_module() -> None:
    for path in sorted(LIBRARY.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "random":
                # np.random.<anything> as a call target is a non-cryptographic source.
                assert not (isinstance(node.value, ast.Name) and node.value.id in {"np", "numpy"}), (
                    f"{path.name}:{node.lineno} uses numpy.random"
                )
        assert "random" not in _imports(path), f"{path.name} imports the random module"


def test_package_ships_a_typing_marker() -> None:
    assert (LIBRARY / "py.typed").exists()
