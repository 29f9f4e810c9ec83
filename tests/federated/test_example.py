"""examples/federated_digits.py trains through the real HTTP API with secure aggregation, one
client of five dropping out of every round after key agreement, and matches plaintext FedAvg."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_digits_example_matches_plaintext_fedavg_within_two_points() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "federated_digits.py"), "--rounds", "10"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rounds = re.findall(r"^\s+(\d+)\s+(0\.\d+)\s+(0\.\d+)\s+(\S+)\s+(0\.\d+)$", run.stdout,
                        re.MULTILINE)
    assert [int(r[0]) for r in rounds] == list(range(1, 11))  # accuracy printed every round
    assert all(float(r[3]) < 1e-6 for r in rounds)  # same survivors in plaintext: exact
    assert "client 4 drops out of every round after key agreement" in run.stdout
    final = re.search(r"CKKS FedAvg ([\d.]+)%\s+plaintext FedAvg ([\d.]+)%", run.stdout)
    assert final is not None, run.stdout
    ours, plain = float(final.group(1)), float(final.group(2))
    assert abs(ours - plain) <= 2.0
    everyone = re.search(r"plaintext FedAvg over all 5 clients \(no dropout\): ([\d.]+)%", run.stdout)
    assert everyone is not None and abs(ours - float(everyone.group(1))) <= 2.0
    assert ours >= 90.0  # and it actually learned the digits
