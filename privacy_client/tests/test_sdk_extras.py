"""The base install imports without the extras; each extra's names fail with an ImportError that
names the pip command. Run from a clean venv (tests/sdk/test_standalone_install.py) the extras
are really missing; elsewhere a subprocess blocks their modules (`sys.modules[name] = None`)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest
from sdk_support import PATIENTS_SCHEMA, patient_rows

import privacy_client
from privacy_client import Client

NEEDS_TENSEAL = pytest.mark.skipif(importlib.util.find_spec("tenseal") is None,
                                   reason="without TenSEAL the message names tenseal first")
LAZY_NAMES = ("FederatedClient", "generate_keys", "encrypt_update", "decrypt_aggregate",
              "VerificationError", "PRESETS")


def run_without(modules: tuple[str, ...], code: str) -> subprocess.CompletedProcess[str]:
    block = "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    script = "import sys\n" + block + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_the_core_imports_without_any_extra():
    out = run_without(("tenseal", "privacy_secagg", "pandas", "cryptography", "Crypto"), """
        import privacy_client
        from privacy_client import *  # noqa: F403 - __all__ holds the core names only
        assert Client and BudgetExhausted and UploadFailed
        # nothing heavy came in with it, and never the server
        for name in ("privacy_api", "flask", "sqlalchemy", "tenseal", "pandas", "diffprivlib"):
            assert sys.modules.get(name) is None, name
        print("ok")
    """)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# Without TenSEAL no federated name imports; without privacy-secagg, the CKKS helpers still do
# (they need only TenSEAL), but FederatedClient, which runs the protocol, does not.
CASES = [*(("tenseal", name) for name in LAZY_NAMES),
         pytest.param("privacy_secagg", "FederatedClient", marks=NEEDS_TENSEAL),
         pytest.param("privacy_secagg", "VerificationError", marks=NEEDS_TENSEAL)]


@pytest.mark.parametrize(("missing", "name"), CASES)
def test_federated_names_without_the_extra_name_the_pip_command(missing, name):
    out = run_without((missing,), f"""
        import privacy_client
        try:
            from privacy_client import {name}
        except ImportError as exc:
            print(exc)
        else:
            raise SystemExit("imported without {missing}")
    """)
    assert out.returncode == 0, out.stderr
    assert "pip install 'privacy-client[federated]'" in out.stdout
    assert f"({missing} is not installed)" in out.stdout


def test_federated_submodule_without_the_extra_names_the_pip_command():
    out = run_without(("tenseal",), """
        try:
            import privacy_client.federated
        except ImportError as exc:
            print(exc)
    """)
    assert out.returncode == 0 and "pip install 'privacy-client[federated]'" in out.stdout, out.stderr


@pytest.mark.skipif(importlib.util.find_spec("tenseal") is not None, reason="[federated] is installed")
def test_federated_names_really_missing_here():
    with pytest.raises(ImportError, match=r"pip install 'privacy-client\[federated\]'"):
        privacy_client.FederatedClient  # noqa: B018 - the attribute access is the test


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        privacy_client.no_such_name  # noqa: B018
    assert "FederatedClient" in dir(privacy_client)


def test_frames_without_pandas_name_the_extra_and_charge_nothing(served, monkeypatch):
    _, owner = served.user("owner")
    aid, analyst = served.user("analyst")
    with Client(served.url, owner) as owner_client:
        ds = owner_client.create_dataset("patients", PATIENTS_SCHEMA["columns"],
                                         privacy_unit=PATIENTS_SCHEMA["privacy_unit"])["id"]
        owner_client.upload_records(ds, patient_rows(20), progress=False)
    served.grant(aid, ds, 1.0)
    # Without the extra: really missing in the base venv, blocked here otherwise
    monkeypatch.setitem(sys.modules, "pandas", None)
    with Client(served.url, analyst) as c:
        with pytest.raises(ImportError, match=r"pip install 'privacy-client\[pandas\]'"):
            c.sql(ds, "SELECT COUNT(*) AS n FROM patients", epsilon=0.5)
        with pytest.raises(ImportError, match=r"pip install 'privacy-client\[pandas\]'"):
            c.query(ds, aggregate="count", epsilon=0.5, as_frame=True)
        assert c.budgets()[0]["epsilon_spent"] == 0
        # the JSON answers need no pandas
        assert c.sql(ds, "SELECT COUNT(*) AS n FROM patients", epsilon=0.5, as_frame=False)["rows"]
        assert isinstance(c.query(ds, aggregate="count", epsilon=0.5)["result"], int)
