"""The layering: every import between our modules points down the stack, never up or sideways.

    app wiring   privacy_api (create_app), app/: factory, cli, demo, serving, wsgi, logging_setup
    views        api/, dashboard/, api_docs/     (siblings: none imports another)
    http edge    http/: auth, limits, work_limits, json_bodies, strict_json, openapi, metrics,
                 error_responses, security_headers, session
    runtime      runtime/: config (Settings), state (AppState): what a running instance holds;
                 views and the edge read it, services never do (they are handed what they need)
    services     services/
    storage      storage/: db, models, columns, dataset_schema, migrate; migrations/
    crypto       crypto/
    domain       domain/: errors, names, units
    mechanisms   mechanisms/ (pure: imports nothing of ours)

A module may import its own layer and any layer below it. Lazy imports inside functions and
`TYPE_CHECKING` imports count: an arrow is an arrow. The table maps each module to its layer by
its folder (longest dotted prefix). A module outside every folder fails the test: put it in one.

Run as a script (`.venv/bin/python tests/test_layout.py`) it prints every import between layers.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Source folder -> the dotted name its files import as. Alembic's folder is mapped into the
# package's namespace wherever it sits (repository root or privacy_api/).
SOURCE_ROOTS = {"privacy_api": "privacy_api", "mechanisms": "mechanisms",
                "migrations": "privacy_api.migrations"}
OURS = ("privacy_api", "mechanisms")

# Top first: a layer may import itself and what is below it.
LAYERS = ["app", "views", "http", "runtime", "services", "storage", "crypto", "domain", "mechanisms"]
RANK = {name: len(LAYERS) - i for i, name in enumerate(LAYERS)}

LAYER_OF = {
    "privacy_api": "app",  # the package itself: create_app
    "privacy_api.app": "app",
    "privacy_api.api": "views",
    "privacy_api.dashboard": "views",
    "privacy_api.api_docs": "views",
    "privacy_api.http": "http",
    "privacy_api.runtime": "runtime",
    "privacy_api.services": "services",
    "privacy_api.storage": "storage",
    "privacy_api.migrations": "storage",
    "privacy_api.crypto": "crypto",
    "privacy_api.domain": "domain",
    "mechanisms": "mechanisms",
}
# Views are siblings: the dashboard does not reach into the API's blueprints, nor they into it.
SIBLING_PACKAGES = ("privacy_api.api", "privacy_api.dashboard", "privacy_api.api_docs")


@dataclass(frozen=True)
class Arrow:
    source: str
    target: str
    path: str
    line: int


def layer_of(module: str) -> str | None:
    # "privacy_api" names the package's own __init__ only: a new loose module must be placed.
    best = max((p for p in LAYER_OF if module == p or (p != "privacy_api" and module.startswith(p + "."))),
               key=len, default=None)
    return LAYER_OF[best] if best is not None else None


def sibling_of(module: str) -> str | None:
    return next((p for p in SIBLING_PACKAGES if module == p or module.startswith(p + ".")), None)


def our_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for folder, dotted in SOURCE_ROOTS.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")) if base.is_dir() else []:
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([dotted, *parts])] = path
    return modules


def arrows(modules: dict[str, Path]) -> list[Arrow]:
    found: list[Arrow] = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    up = package.split(".")
                    base = ".".join(up[: len(up) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                # `from . import metrics` imports a module; `from .x import y` imports from one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for target in targets:
                if target.split(".")[0] in OURS and target != name:
                    found.append(Arrow(name, target, rel, node.lineno))
    return found


def problems(modules: dict[str, Path]) -> list[str]:
    out = [f"{m} ({p.relative_to(ROOT)}) is in no layer: add it to tests/test_layout.py LAYER_OF"
           for m, p in modules.items() if layer_of(m) is None]
    for a in arrows(modules):
        src, dst = layer_of(a.source), layer_of(a.target)
        if src is None or dst is None:
            continue
        where = f"{a.path}:{a.line}: {a.source} ({src}) imports {a.target} ({dst})"
        if RANK[dst] > RANK[src]:
            out.append(f"{where}: upward")
        elif src == dst == "views" and sibling_of(a.source) != sibling_of(a.target):
            out.append(f"{where}: sideways between views")
    return out


def test_every_module_is_in_a_layer_and_imports_point_downward() -> None:
    found = problems(our_modules())
    assert not found, "\n".join(found)


def test_mechanisms_import_nothing_of_ours() -> None:
    modules = our_modules()
    outside = [a for a in arrows(modules) if a.source.startswith("mechanisms")
               and not a.target.startswith("mechanisms")]
    assert not outside, outside


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    # The test could pass by seeing nothing: an upward import must be reported.
    global ROOT
    (tmp_path / "privacy_api" / "services").mkdir(parents=True)
    (tmp_path / "privacy_api" / "__init__.py").write_text("")
    (tmp_path / "privacy_api" / "services" / "__init__.py").write_text("")
    (tmp_path / "privacy_api" / "services" / "q.py").write_text(
        "def f():\n    from ..api.users import bp\n")
    (tmp_path / "privacy_api" / "dashboard").mkdir()
    (tmp_path / "privacy_api" / "dashboard" / "v.py").write_text("from ..api.users import bp\n")
    (tmp_path / "privacy_api" / "api").mkdir()
    (tmp_path / "privacy_api" / "api" / "users.py").write_text("")
    (tmp_path / "privacy_api" / "stray.py").write_text("")
    saved, ROOT = ROOT, tmp_path
    try:
        found = problems(our_modules())
    finally:
        ROOT = saved
    assert any("privacy_api.services.q (services) imports privacy_api.api.users (views): upward" in p
               for p in found), found
    assert any("sideways between views" in p for p in found), found
    assert any(p.startswith("privacy_api.stray ") and "in no layer" in p for p in found), found


def test_the_wheel_lists_every_package() -> None:
    # Once pyproject lists packages by hand (Alembic's top-level migrations/ is mapped into
    # privacy_api's namespace, which setuptools' find cannot do), a new package must be added.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = pyproject["tool"]["setuptools"].get("packages")
    if not isinstance(listed, list):
        pytest.skip(reason="pyproject finds its packages: no explicit list to check yet")
    on_disk = {".".join(init.parent.relative_to(ROOT).parts)
               for top in ("privacy_api", "mechanisms", "privacy_client")
               if (ROOT / top / "__init__.py").is_file()  # not a separate distribution
               for init in (ROOT / top).rglob("__init__.py")}
    assert on_disk - set(listed) == set(), "add these to pyproject's [tool.setuptools] packages"


if __name__ == "__main__":
    mods = our_modules()
    edges = Counter((layer_of(a.source), layer_of(a.target)) for a in arrows(mods)
                    if layer_of(a.source) != layer_of(a.target))
    print(f"{'from':<12}{'to':<12}imports")
    for (src, dst), count in sorted(edges.items(), key=lambda e: (-RANK.get(e[0][0] or "", 0),
                                                                   -RANK.get(e[0][1] or "", 0))):
        print(f"{src or '?':<12}{dst or '?':<12}{count}")
    issues = problems(mods)
    print("\n".join(issues) if issues else "no upward or sideways imports")
    sys.exit(1 if issues else 0)
