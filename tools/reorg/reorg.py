#!/usr/bin/env python3
"""Issue 15 parts 6-7: group privacy_api's loose modules into layers; Alembic to the repo root.

Run once, in the root of a clean checkout (`python3 /work/reorg/reorg.py`; `--dry-run` only
prints the plan). It `git mv`s every file, then rewrites imports (relative and absolute, by a
module map), dotted module names in any text (monkeypatch targets, gunicorn paths, entry points,
docs), file paths in docs and config, pyproject's packaging and the migration lookup. It
refuses to run twice, or on a dirty tree. It prints what it did, and every root-level module it
does not know (those stay where they are: rerun after `git reset --hard` with
`--place NAME=FOLDER`, or move them by hand). See README.md beside it.

Target:
    privacy_api/__init__.py   re-exports create_app, __version__ from app/factory.py
    privacy_api/app/          wiring: factory (create_app), cli, demo, serving, gunicorn_conf,
                              wsgi, logging_setup
    privacy_api/http/         edge: auth, limits, work_limits, json_bodies, strict_json, openapi,
                              metrics, error_responses, security_headers, session (from api/)
    privacy_api/runtime/      what a running instance holds: config (Settings), state (AppState)
    privacy_api/storage/      db, models, columns, dataset_schema, migrate (+ shared_arrays)
    privacy_api/domain/       errors, names, units (+ ledger_chain, renewal)
    migrations/               Alembic, shipped in the wheel as privacy_api/migrations
    api/ dashboard/ api_docs/ services/ crypto/ mechanisms/ stay.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

PKG = "privacy_api"

# Root-level module -> the folder it joins. The last entries are modules other branches add
# (issue-cache, issue-ledger, issue-life, issue-scale); absent ones are skipped.
PLACEMENT: dict[str, str] = {
    "cli": "app", "demo": "app", "serving": "app", "gunicorn_conf": "app", "wsgi": "app",
    "logging_setup": "app",
    "auth": "http", "limits": "http", "work_limits": "http", "json_bodies": "http",
    "strict_json": "http", "openapi": "http", "metrics": "http", "error_responses": "http",
    "security_headers": "http",
    "config": "runtime", "state": "runtime",
    "db": "storage", "models": "storage", "columns": "storage", "dataset_schema": "storage",
    "migrate": "storage",
    "errors": "domain", "names": "domain", "units": "domain",
    # from other branches: pure shared-memory arrays under the column cache; the ledger's
    # pure hash chain (models import it); calendar renewal periods (pure); schema-only
    # synthetic rows (reads columns and schema: a service)
    "shared_arrays": "storage", "ledger_chain": "domain", "renewal": "domain",
    "dummy_data": "services",
    # issue-scale: malloc_trim after a large request, called by the upload view
    "memory": "http",
    # issue-scale2: the decryption pool's child-side code and lifetime, the instance's shared
    # directory (storage), unit hashing shared by the pool and the schema (domain)
    "pool_tasks": "storage", "idle_pool": "storage", "instance_dir": "storage",
    "unit_ids": "domain",
}
# Modules inside packages that move too (old dotted name -> new dotted name).
EXTRA_MODULES = {f"{PKG}.api.session": f"{PKG}.http.session"}
NEW_PACKAGES = {
    "app": "App wiring, the top of the stack: create_app, the command line, serving, logging.",
    "http": "The HTTP edge the views stand on: authentication, limits, error responses, headers.",
    "runtime": "What a running instance holds (settings, app state): read by views and the edge;\n"
               "services are handed what they need instead.",
    "storage": "Storage: the engine and sessions, the models, the schema and the decrypted column\n"
               "cache over the records, Alembic's driver.",
    "domain": "The vocabulary every layer shares: domain errors, names, privacy units.",
}
FACTORY = f"{PKG}.app.factory"
TEXT_SUFFIXES = {".py", ".md", ".toml", ".cfg", ".ini", ".txt", ".sh", ".html", ".mako", ".yml",
                 ".yaml", ".json", ".rst", ".in"}
TEXT_NAMES = {"Makefile", "run", "Dockerfile", ".gitignore"}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def tracked() -> list[Path]:
    return [Path(p) for p in git("ls-files").splitlines()]


def module_name(path: Path) -> str | None:
    """Dotted name of a Python file under privacy_api/ (or Alembic's folder), else None."""
    parts = list(path.with_suffix("").parts)
    if parts[0] != PKG:
        return None
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def plan_moves(root: Path, places: dict[str, str]) -> tuple[dict[Path, Path], dict[str, str], list[str]]:
    """(file moves, old module -> new module, unknown root modules)."""
    moves: dict[Path, Path] = {}
    modules: dict[str, str] = {}
    unknown: list[str] = []
    for path in sorted((root / PKG).glob("*.py")):
        name = path.stem
        if name in ("__init__", "app"):
            continue
        folder = places.get(name)
        if folder is None:
            unknown.append(name)
            continue
        moves[Path(PKG, f"{name}.py")] = Path(PKG, folder, f"{name}.py")
        modules[f"{PKG}.{name}"] = f"{PKG}.{folder}.{name}"
    for old, new in EXTRA_MODULES.items():
        src = Path(*old.split(".")).with_suffix(".py")
        if (root / src).exists():
            moves[src] = Path(*new.split(".")).with_suffix(".py")
            modules[old] = new
    # the factory module (privacy_api/app.py) becomes app/factory.py; __init__.py stays (lazy)
    moves[Path(PKG, "app.py")] = Path(*FACTORY.split(".")).with_suffix(".py")
    modules[f"{PKG}.app"] = FACTORY
    for path in sorted((root / PKG / "migrations").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            rel = path.relative_to(root)
            moves[rel] = Path("migrations", *rel.parts[2:])
    return moves, modules, unknown


def relative(from_package: str, target: str) -> str:
    """`from <this> import`: the relative spelling of `target` seen from `from_package`."""
    here, there = from_package.split("."), target.split(".")
    common = 0
    while common < min(len(here), len(there)) and here[common] == there[common]:
        common += 1
    return "." * (len(here) - common + 1) + ".".join(there[common:])


class ImportRewriter:
    def __init__(self, modules: dict[str, str], all_old_modules: set[str]) -> None:
        self.modules = modules  # old -> new, moved modules only
        self.known = all_old_modules  # every module of ours, by its old name

    def new_name(self, old: str) -> str:
        best = max((m for m in self.modules if old == m or old.startswith(m + ".")), key=len, default=None)
        return old if best is None else self.modules[best] + old[len(best):]

    def rewrite(self, source: str, old_module: str | None, new_module: str | None,
                old_is_package: bool, new_is_package: bool) -> tuple[str, int]:
        """Rewrite every `from X import ...` whose X (or imported submodule) moved."""
        tree = ast.parse(source)
        lines = source.splitlines(keepends=True)
        edits: list[tuple[int, int, int, str]] = []  # (line, col_start, col_end, new text)
        old_pkg = None if old_module is None else (
            old_module if old_is_package else old_module.rpartition(".")[0])
        new_pkg = None if new_module is None else (
            new_module if new_is_package else new_module.rpartition(".")[0])
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                if old_pkg is None or new_pkg is None:
                    continue
                up = old_pkg.split(".")
                base = ".".join(up[: len(up) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
                if base.split(".")[0] != PKG:
                    continue
            # The module the statement's "from" must name, after the move.
            targets = set()
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in self.known:  # `from pkg import submodule`
                    targets.add(self.new_name(sub).rpartition(".")[0])
                elif base == PKG and node.level:  # create_app & co, from inside the package
                    targets.add(FACTORY)
                else:
                    targets.add(self.new_name(base))
            if len(targets) != 1:
                raise SystemExit(f"{old_module}: line {node.lineno} imports submodules that now live "
                                 f"in different packages ({sorted(targets)}); split it by hand first")
            (target,) = targets
            if node.level:
                assert new_pkg is not None
                spelled = relative(new_pkg, target)
            else:
                spelled = target
            line = lines[node.lineno - 1]
            m = re.compile(r"from\s+(\.*[\w.]*)\s+import").match(line, node.col_offset)
            if m is None:
                raise SystemExit(f"{old_module}: cannot read the import on line {node.lineno}")
            if m.group(1) != spelled:
                edits.append((node.lineno - 1, m.start(1), m.end(1), spelled))
        for lineno, start, end, text in sorted(edits, reverse=True):
            lines[lineno] = lines[lineno][:start] + text + lines[lineno][end:]
        return "".join(lines), len(edits)


def dotted_pattern(modules: dict[str, str]) -> re.Pattern[str]:
    keys = sorted(modules, key=len, reverse=True)
    return re.compile(r"(?<![\w.])(" + "|".join(re.escape(k) for k in keys) + r")(?![\w])")


def path_pattern(moves: dict[Path, Path]) -> tuple[re.Pattern[str], dict[str, str]]:
    table = {str(old): str(new) for old, new in moves.items()
             if old.suffix == ".py" and old.name != "__init__.py" and old.parts[1] != "migrations"}
    table[f"{PKG}/migrations"] = "migrations"
    keys = sorted(table, key=len, reverse=True)
    return re.compile(r"(?<![\w])(" + "|".join(re.escape(k) for k in keys) + r")(?![\w])"), table


MIGRATE_OLD = 'MIGRATIONS = Path(__file__).parent / "migrations"\n'
MIGRATE_NEW = '''

def migrations_dir() -> Path:
    """Alembic's folder: the repository's top-level migrations/ in a checkout or an editable
    install; privacy_api/migrations inside an installed wheel (pyproject maps it there)."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError(f"no migrations/ with env.py in {package} or beside it")
'''


def fix_migrate(text: str) -> str:
    if MIGRATE_OLD not in text:
        raise SystemExit("storage/migrate.py: the MIGRATIONS line changed; update reorg.py")
    text = text.replace(MIGRATE_OLD, MIGRATE_NEW.lstrip("\n"))
    return text.replace("str(MIGRATIONS)", "str(migrations_dir())")


def fix_pyproject(text: str, packages: list[str]) -> str:
    find = re.compile(r"\[tool\.setuptools\.packages\.find\]\n(?:#[^\n]*\n)*include = \[[^\]]*\]\n")
    if not find.search(text):
        raise SystemExit("pyproject.toml: no [tool.setuptools.packages.find] include block to replace")
    listed = ",\n".join(f'    "{p}"' for p in packages)
    block = (
        "[tool.setuptools]\n"
        "# Listed, not found: Alembic's top-level migrations/ ships inside the package as\n"
        "# privacy_api.migrations (tests/test_layout.py checks this list against the tree).\n"
        "# The SDK (privacy_client/) and the secure-aggregation core (secagg/) are distributions\n"
        "# of their own.\n"
        f"packages = [\n{listed},\n]\n"
        'package-dir = {"privacy_api.migrations" = "migrations"}\n'
    )
    text = find.sub(block, text)
    text, n = re.subn(r'"migrations/\*\*/\*",\s*', "", text)
    if n != 1:
        raise SystemExit("pyproject.toml: migrations/**/* not found once in package-data")
    return text.replace("[tool.setuptools.package-data]\n",
                        '[tool.setuptools.package-data]\n"privacy_api.migrations" = ["script.py.mako"]\n', 1)


def packages_after(root: Path) -> list[str]:
    found = []
    for top in (PKG, "mechanisms", "privacy_client"):
        inits = sorted((root / top).rglob("__init__.py")) if (root / top / "__init__.py").exists() else []
        for init in inits:
            found.append(".".join(init.parent.relative_to(root).parts))
    found += [f"{PKG}.migrations", f"{PKG}.migrations.versions"]
    return sorted(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    ap.add_argument("--place", action="append", default=[], metavar="NAME=FOLDER",
                    help="put root module NAME into privacy_api/FOLDER/ (repeatable)")
    args = ap.parse_args()
    root = Path.cwd()
    if not (root / PKG / "__init__.py").is_file() or not (root / "pyproject.toml").is_file():
        raise SystemExit("run me in the root of a privacy-api checkout")
    if (root / PKG / "app").exists() or (root / "migrations" / "env.py").exists():
        raise SystemExit("already reorganised (privacy_api/app/ or migrations/env.py exists): refusing")
    if git("status", "--porcelain", "--untracked-files=no").strip():
        raise SystemExit("the work tree has uncommitted changes: commit or stash them first")
    places = dict(PLACEMENT)
    for item in args.place:
        name, _, folder = item.partition("=")
        places[name] = folder

    moves, modules, unknown = plan_moves(root, places)
    old_modules = {m for p in tracked() if p.suffix == ".py" and (m := module_name(p))}
    old_modules |= {f"{PKG}.migrations.{'.'.join(p.with_suffix('').parts[2:])}"
                    for p in tracked() if p.parts[:2] == (PKG, "migrations") and p.suffix == ".py"}
    print(f"moving {len(moves)} files:")
    for old, new in sorted(moves.items()):
        if old.parts[1] != "migrations":
            print(f"  {old}  ->  {new}")
    n_migrations = sum(o.parts[1] == "migrations" for o in moves)
    print(f"  {PKG}/migrations/**  ->  migrations/**  ({n_migrations} files)")
    if unknown:
        print("\nNOT MOVED, root-level modules reorg.py does not know "
              "(decide, then --place NAME=FOLDER):")
        for name in unknown:
            print(f"  {PKG}/{name}.py")
    if args.dry_run:
        return

    # 1. Rewrite imports in every Python file, judged from where it is now and where it goes.
    rewriter = ImportRewriter(modules, old_modules)
    new_text: dict[Path, str] = {}
    changed_imports = 0
    for path in tracked():
        if path.suffix != ".py" or not (root / path).is_file():
            continue
        dest = moves.get(path, path)
        old_mod = module_name(path)
        new_mod = None if old_mod is None else module_name(dest)
        if path.parts[:2] == (PKG, "migrations"):
            old_mod = new_mod = None  # run by Alembic by path: only absolute imports matter
        source = (root / path).read_text()
        try:
            text, n = rewriter.rewrite(source, old_mod, new_mod, path.name == "__init__.py",
                                       dest.name == "__init__.py")
        except SyntaxError:
            continue
        if path == Path(PKG, "app.py"):
            text = text.replace("APIFlask(__name__,", f'APIFlask("{PKG}",')  # import name: the package
        if text != source:
            new_text[dest] = text
            changed_imports += n

    # 2. Move.
    for folder in NEW_PACKAGES:
        (root / PKG / folder).mkdir(exist_ok=True)
    (root / "migrations").mkdir(exist_ok=True)
    for old, new in sorted(moves.items()):
        (root / new).parent.mkdir(parents=True, exist_ok=True)
        git("mv", str(old), str(new))
    for dest, text in new_text.items():
        (root / dest).write_text(text)
    for folder, doc in NEW_PACKAGES.items():
        init = root / PKG / folder / "__init__.py"
        if not init.exists():
            init.write_text(f'"""{doc}"""\n')
    init_text = (root / PKG / "__init__.py").read_text()
    (root / PKG / "__init__.py").write_text(
        init_text.replace("from .app import create_app as factory",
                          "from .app.factory import create_app as factory")
                 .replace("lives in `privacy_api.app`", "lives in `privacy_api.app.factory`"))
    # Alembic's old folder keeps only untracked caches: remove it so the listing tells the truth.
    old_migrations = root / PKG / "migrations"
    if old_migrations.exists() and not any(p.is_file() and "__pycache__" not in p.parts
                                           for p in old_migrations.rglob("*")):
        shutil.rmtree(old_migrations)
    git("add", "-A", PKG, "migrations")
    print(f"\nrewrote {changed_imports} import statements in {len(new_text)} Python files")

    # 3. Dotted module names and file paths in every tracked text file.
    dotted = dotted_pattern(modules)
    paths, path_table = path_pattern(moves)
    touched: dict[str, int] = {}
    for path in tracked():
        full = root / path
        if not full.is_file() or full.is_symlink():
            continue
        if path.suffix not in TEXT_SUFFIXES and path.name not in TEXT_NAMES:
            continue
        try:
            source = full.read_text()
        except UnicodeDecodeError:
            continue
        text, n1 = dotted.subn(lambda m: modules[m.group(1)], source)
        text, n2 = paths.subn(lambda m: path_table[m.group(1)], text)
        if path == Path("pyproject.toml"):
            text = fix_pyproject(text, packages_after(root))
        if path == Path(PKG, "storage", "migrate.py"):
            text = fix_migrate(text)
        if text != source:
            full.write_text(text)
            touched[str(path)] = n1 + n2
    print(f"rewrote module names / paths in {len(touched)} files:")
    for name, n in sorted(touched.items()):
        print(f"  {name}: {n}")

    leftovers = git("grep", "-n", "-E", r"\b(privacy_api/__init__\.py)", "--", ".", ":!*.lock").strip() \
        if subprocess.run(["git", "grep", "-q", "privacy_api/__init__.py"]).returncode == 0 else ""
    if leftovers:
        print("\nmentions of privacy_api/__init__.py (create_app is now in privacy_api/app/factory.py):")
        print("  " + leftovers.replace("\n", "\n  "))
    ruff = root / ".venv" / "bin" / "ruff"
    if ruff.exists():  # the moved imports sort differently; only the import-order rule (I001)
        out = subprocess.run([str(ruff), "check", "--select", "I", "--fix", "--quiet", "."],
                             capture_output=True, text=True)
        print(f"\nruff --select I --fix: {'clean' if out.returncode == 0 else out.stdout + out.stderr}")
    else:
        print("\nno .venv/bin/ruff: run `ruff check --select I --fix .` for import order")
    if unknown:
        print("\nREMINDER, not moved: " + ", ".join(f"{PKG}/{n}.py" for n in unknown))
    print("\nnext: the checklist in /work/reorg/README.md (reinstall the venv's editable install, "
          "ruff --fix for import order, mypy, tests)")


if __name__ == "__main__":
    sys.exit(main())
