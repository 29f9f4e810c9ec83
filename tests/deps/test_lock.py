"""Reproducible installs: the hashed lock matches pyproject.toml, and installs cleanly on a fresh venv.

`make install` / `make serve` / `make test` install requirements/lock.txt with --require-hashes and the
project on top with --no-deps (docs/operations.md "Dependencies"); CI runs `make lock-check` first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from .lock_consistency import locked_pins, mismatches

ROOT = Path(__file__).resolve().parents[2]
REQ = ROOT / "requirements"
PYPROJECT = (ROOT / "pyproject.toml").read_text()


def _lock(name: str) -> str:
    return (REQ / name).read_text()


def test_lock_meets_every_pyproject_requirement():
    assert mismatches(PYPROJECT, _lock("lock.txt")) == []


def test_runtime_lock_is_the_dev_lock_without_the_test_tools():
    dev, runtime = locked_pins(_lock("lock.txt")), locked_pins(_lock("runtime.txt"))
    # every runtime pin is the tested one, and the runtime image carries no test tooling
    assert {name: dev[name] for name in runtime} == runtime
    assert not {"pytest", "schemathesis", "playwright", "mypy", "ruff", "pandas"} & runtime.keys()
    assert {"sqlalchemy", "cryptography", "apiflask", "gunicorn", "setuptools"} <= runtime.keys()


def test_every_locked_package_carries_hashes():
    for name in ("lock.txt", "runtime.txt", "tools.txt"):
        text = _lock(name)
        pins = [line for line in text.splitlines() if "==" in line and not line.startswith(" ")]
        assert pins and all(line.rstrip().endswith("\\") for line in pins), name
        # pip refuses the whole file under --require-hashes if one pin lacks a hash
        assert text.count("--hash=sha256:") >= len(pins)


def test_offline_check_catches_pyproject_edited_without_relocking():
    lock = _lock("lock.txt")
    tightened = PYPROJECT.replace('"sqlalchemy>=2.1,<2.2"', '"sqlalchemy>=2.2,<2.3"')
    added = PYPROJECT.replace('"tqdm>=4.66,<5",', '"tqdm>=4.66,<5",\n    "six>=1.16",')
    removed = PYPROJECT.replace('    "ijson>=3.3,<4",\n', "")
    assert tightened != PYPROJECT and added != PYPROJECT and removed != PYPROJECT
    assert mismatches(tightened, lock) == [
        "sqlalchemy<2.3,>=2.2 is required but the lock pins sqlalchemy==2.1.9"]
    assert mismatches(added, lock) == ["six>=1.16 is required but not locked"]
    assert mismatches(removed, lock) == [
        "the lock pins ijson for the project, which no longer requires it"]


def _uv() -> Path:
    uv = Path(sys.executable).parent / "uv"
    assert uv.exists(), "uv comes from requirements/tools.txt (make install)"
    return uv


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(root / "requirements" / "lock.sh"), "--check"], capture_output=True,
                          text=True, env={**os.environ, "UV": str(_uv())}, timeout=300)


@pytest.mark.slow
def test_lock_check_passes_as_committed_and_fails_on_an_unlocked_edit(tmp_path: Path):
    # The exact CI check (re-lock at the recorded instant, diff), on a copy so the edit stays there.
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(REQ, tmp_path / "requirements")
    for dist in ("secagg", "privacy_client"):  # the lock's local inputs (requirements/dev.in)
        shutil.copytree(ROOT / dist, tmp_path / dist,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "tests"))
    ok = _check(tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    edited = PYPROJECT.replace('"tqdm>=4.66,<5",', '"tqdm>=4.66,<5",\n    "six>=1.16",')
    (tmp_path / "pyproject.toml").write_text(edited)
    bad = _check(tmp_path)
    assert bad.returncode == 1
    assert "+six==" in bad.stdout and "run 'make lock'" in bad.stderr


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"})
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.slow
def test_clean_install_from_the_lock_on_a_fresh_venv(tmp_path: Path):
    # What a production image does (docs/operations.md), on a venv with nothing in it and a copy of
    # the source (so the build leaves nothing in the work tree). The runtime lock: lock.txt adds the
    # test tools and is installed the same way by `make install`, which CI runs on a fresh clone
    # (its venv is new), so this stays about a minute on a warm pip cache.
    lock = "runtime.txt"
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("privacy_api", "mechanisms", "migrations", "secagg"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(REQ, src / "requirements")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = str(env_dir / "bin" / "python")
    _run([py, "-m", "pip", "install", "-q", "--require-hashes", "-r", "requirements/tools.txt"], src)
    _run([py, "-m", "pip", "install", "-q", "--require-hashes", "-r", f"requirements/{lock}"], src)
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "./secagg", "."], src)
    _run([py, "-m", "pip", "check"], src)
    # imported from the venv, not from the source copy (cwd is tmp_path, not src)
    where = _run([py, "-c", "import privacy_api, privacy_secagg, mechanisms; print(privacy_api.__file__)"],
                 tmp_path)
    assert str(env_dir) in where.stdout
    assert "serve" in _run([str(env_dir / "bin" / "privacy-api"), "--help"], tmp_path).stdout
    # The wheel ships the repository's top-level migrations/ as privacy_api/migrations, and the
    # installed command finds them there (issue 15: Alembic at the root, still found installed).
    shipped = Path(where.stdout.strip()).parent / "migrations"
    assert (shipped / "env.py").exists() and list((shipped / "versions").glob("*.py"))
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env |= {"PRIVACY_API_DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.sqlite3'}",
            "PRIVACY_API_MASTER_KEYS": Fernet.generate_key().decode()}
    upgraded = subprocess.run([str(env_dir / "bin" / "privacy-api"), "db", "upgrade"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)
    assert upgraded.returncode == 0 and "database at head" in upgraded.stdout, upgraded.stderr
    installed = _run([py, "-m", "pip", "list", "--format=freeze"], tmp_path).stdout
    pins = locked_pins(_lock(lock))
    for line in installed.splitlines():
        name, _, version = line.partition("==")
        key = name.lower().replace("_", "-")
        if key in pins:
            assert str(pins[key]) == version, line
