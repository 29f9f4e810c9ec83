"""`pip install ./privacy_client` alone, in a clean venv: only httpx, numpy and tqdm come in, and
the SDK's own tests (privacy_client/tests) pass there against an app served from this venv.

Then `[pandas]` is added and the DataFrame tests run. `[federated]` (TenSEAL) is not installed
there; the run checks instead that its names raise the ImportError naming the extra.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.sdk_server import served_for_sdk

ROOT = Path(__file__).resolve().parents[2]
# Whatever else the SDK's dependencies pull in, these must never be among them.
SERVER_SIDE = {"privacy-api", "privacy-secagg", "flask", "apiflask", "sqlalchemy", "alembic",
               "tenseal", "diffprivlib", "scikit-learn", "scipy", "cryptography", "pycryptodome",
               "psycopg", "gunicorn", "pandas"}

pytestmark = pytest.mark.slow


# What the SDK's venv sees of the environment: no PYTHONPATH into the repository's sources.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run(*args: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600,
                         env=CLEAN_ENV, **kwargs)  # type: ignore[call-overload]
    assert out.returncode == 0, f"{args}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def pip(python: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """This venv's pip, acting on the venv of `python` (which therefore needs no pip of its own)."""
    return run(sys.executable, "-m", "pip", "--python", python, *args)


def installed(python: Path) -> set[str]:
    out = pip(python, "list", "--format=freeze")
    return {line.split("==")[0].lower().replace("_", "-") for line in out.stdout.splitlines() if line}


def sdk_tests(python: Path, tests: Path, env: dict[str, str], *paths: str) -> dict[str, str]:
    """Run the SDK's tests in the clean venv; returns {test name: outcome}."""
    report = tests.parent / "report.xml"
    subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error",
                    f"--junitxml={report}", *paths], cwd=tests, env=env, timeout=600)
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[case.get("name", "")] = kinds[0] if kinds else "passed"
    return outcomes


def test_the_sdk_installs_alone_and_its_tests_pass_against_a_served_app(tmp_path: Path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)  # a bare interpreter: nothing installed
    python = venv / "bin" / "python"
    # `pip install ./privacy_client`, with the wheel built once (an isolated PEP 517 build), so
    # that adding [pandas] below does not build it again; built from a copy, so the build
    # leaves no egg-info or build/ in the checkout
    source = tmp_path / "privacy_client"
    shutil.copytree(ROOT / "privacy_client", source,
                    ignore=shutil.ignore_patterns("tests", "build", "*.egg-info", "__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", tmp_path / "dist",
        source)
    (wheel,) = (tmp_path / "dist").glob("privacy_client-0.1.0-*.whl")
    assert installed(python) == set()
    pip(python, "install", "--quiet", wheel)
    base = installed(python)
    assert "privacy-client" in base and {"httpx", "numpy", "tqdm"} <= base
    assert not base & SERVER_SIDE, base & SERVER_SIDE

    pip(python, "install", "--quiet", "pytest>=8,<9")
    # the tests run from a copy, so `privacy_client` can only be the installed one
    tests = tmp_path / "sdk_tests"
    shutil.copytree(ROOT / "privacy_client" / "tests", tests,
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(CLEAN_ENV)
    probe = subprocess.run([str(python), "-c", "import privacy_api"], capture_output=True, cwd=tests,
                           env=env)
    assert probe.returncode != 0  # the server is not importable from the SDK's venv

    with served_for_sdk(tmp_path) as served:
        env |= {"PRIVACY_CLIENT_TEST_URL": served.url, "PRIVACY_CLIENT_TEST_ADMIN_KEY": served.admin_key}
        outcomes = sdk_tests(python, tests, env, ".")
        failed = {name: kind for name, kind in outcomes.items() if kind in ("failure", "error")}
        assert not failed, failed
        assert outcomes["test_federated_names_really_missing_here"] == "passed"
        assert outcomes["test_frames_without_pandas_name_the_extra_and_charge_nothing"] == "passed"
        assert outcomes["test_upload_resumes_after_a_failed_batch"] == "passed"
        skipped = {name for name, kind in outcomes.items() if kind == "skipped"}
        # without the extras: the DataFrame module and the TenSEAL-only cases skip, nothing else
        assert skipped == {"test_sdk_frames"} | {n for n in outcomes if "privacy_secagg" in n}, skipped

        pip(python, "install", "--quiet", f"{wheel}[pandas]")
        with_pandas = installed(python)
        assert "pandas" in with_pandas and not with_pandas & (SERVER_SIDE - {"pandas"})
        frames = sdk_tests(python, tests, env, "test_sdk_frames.py")
        assert set(frames.values()) == {"passed"} and len(frames) == 3, frames
