"""The three distributions' boundaries: the server needs the SDK for tests only, the SDK needs
three packages, and the secure-aggregation protocol lives once, in privacy_secagg."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def project(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;@]", r, maxsplit=1)[0].lower() for r in requirements}


def imported_modules(package: Path) -> set[str]:
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
    return found


def test_the_server_never_imports_the_sdk(tmp_path: Path):
    assert "privacy_client" not in imported_modules(ROOT / "privacy_api")
    assert "privacy_client" not in imported_modules(ROOT / "mechanisms")
    # and runs without it: the app, its CLI and the federated code with the SDK unimportable
    script = """
import sys
sys.modules["privacy_client"] = None
import privacy_api.api.federated, privacy_api.services.federated, privacy_api.app.cli
from tests.conftest import make_app
app = make_app("sqlite:///" + sys.argv[1])
print(sorted(app.blueprints)[:1])
"""
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "db.sqlite3")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr


def test_the_server_depends_on_the_sdk_for_tests_only():
    server = project(ROOT / "pyproject.toml")
    assert "privacy-client" not in names(server["project"]["dependencies"])
    assert "privacy-secagg" in names(server["project"]["dependencies"])
    assert "privacy-client[pandas,federated]" in server["project"]["optional-dependencies"]["test"]
    shipped = server["tool"]["setuptools"]["packages"]
    assert shipped and not [p for p in shipped if p.startswith(("privacy_client", "privacy_secagg"))]


def test_the_sdk_needs_httpx_numpy_and_tqdm_only():
    sdk = project(ROOT / "privacy_client" / "pyproject.toml")["project"]
    assert sdk["name"] == "privacy-client" and sdk["version"] == "0.1.0"
    assert names(sdk["dependencies"]) == {"httpx", "numpy", "tqdm"}
    extras = sdk["optional-dependencies"]
    assert names(extras["pandas"]) == {"pandas"}
    assert {"tenseal", "privacy-secagg"} <= names(extras["federated"])
    assert (ROOT / "privacy_client" / "src" / "privacy_client" / "py.typed").exists()
    assert imported_modules(ROOT / "privacy_client" / "src") & {"privacy_api", "flask", "sqlalchemy"} == set()


def test_the_protocol_is_implemented_once():
    secagg = project(ROOT / "secagg" / "pyproject.toml")["project"]
    assert names(secagg["dependencies"]) == {"cryptography", "pycryptodome", "numpy"}
    assert imported_modules(ROOT / "secagg" / "src") <= {
        "__future__", "hashlib", "os", "struct", "collections", "dataclasses", "typing", "numpy",
        "Crypto", "cryptography"}
    # no second copy of it: neither the SDK nor the server uses its libraries' primitives
    # directly for it, nor defines a function of the same name
    # (services/query_plan.fingerprint hashes a query plan: a name in common, nothing else)
    protocol = top_level_functions(ROOT / "secagg" / "src") - {"fingerprint"}
    for package in (ROOT / "privacy_client" / "src", ROOT / "privacy_api"):
        assert "Crypto" not in imported_modules(package), package
        assert not protocol & top_level_functions(package), protocol & top_level_functions(package)


def top_level_functions(package: Path) -> set[str]:
    return {node.name for path in package.rglob("*.py")
            for node in ast.parse(path.read_text(), str(path)).body
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")}
