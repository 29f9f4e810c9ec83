"""Slow and idle clients cannot deny service to the served configuration (issue 12, finding 1).

Each test starts the documented production set-up (gunicorn with privacy_api/app/gunicorn_conf.py,
2 workers x 4 threads) over loopback and attacks it the way the red team did. Probes must all
get their answer within a timeout of several seconds - a bound on a loop, never an assertion
on latency (the bench prints the latencies: bench/bench_edge.py).
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest

from privacy_api.services.users import create_user
from privacy_api.storage.db import Database
from tests.server import gunicorn
from tests.slow_clients import SlowClients, probe, slow_header_request, trickled_body_request

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("servers")]

PROBE_TIMEOUT = 5.0


def _keys(tmp_path: Path, sqlite_template: Path) -> tuple[str, dict[str, str]]:
    db = tmp_path / "db.sqlite3"
    shutil.copy(sqlite_template, db)
    database = Database(f"sqlite:///{db}")
    keys = {}
    with database.transaction() as session:
        for role in ("admin", "owner", "analyst"):
            _, keys[role] = create_user(session, role, role)
    database.dispose()
    return f"sqlite:///{db}", keys


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_sixteen_slow_headers_and_trickled_bodies_leave_probes_answered(
        tmp_path: Path, sqlite_template: Path) -> None:
    url, keys = _keys(tmp_path, sqlite_template)
    with gunicorn(url, workers=2, threads=4, served_config=True) as server:
        attack = SlowClients(_port(server.url), interval=0.3)
        for _ in range(16):
            attack.add(slow_header_request())
        # refused from the headers: 401 (forged key), 403 (an analyst uploading)
        for token in ["pa_0123456789abcdef_" + "x" * 43] * 8 + [keys["analyst"]] * 8:
            head, body = trickled_body_request("/v1/datasets/1/records", token)
            attack.add(body, head)
        # and bodies that would end in 409 (a user name that is taken)
        for _ in range(8):
            head, body = trickled_body_request("/v1/users", keys["admin"], length=60_000)
            attack.add(body, head)
        attack.start()
        try:
            time.sleep(1.0)  # every attacking connection has sent something by now
            answers = probe(server.url, keys["admin"], count=20, timeout=PROBE_TIMEOUT)
            assert len(attack.socks) == 40, "the attack must still be running during the probes"
        finally:
            attack.stop()
    assert None not in answers, answers


def test_seven_idle_clients_after_a_409_leave_probes_answered(
        tmp_path: Path, sqlite_template: Path) -> None:
    url, keys = _keys(tmp_path, sqlite_template)
    with gunicorn(url, workers=2, threads=4, served_config=True) as server:
        idle = [httpx.Client(base_url=server.url, timeout=10,
                             headers={"Authorization": f"Bearer {keys['admin']}"})
                for _ in range(7)]
        try:
            # the name is taken: 409, and the SDK's connection stays open and idle
            assert [c.post("/v1/users", json={"name": "admin", "role": "admin"}).status_code
                    for c in idle] == [409] * 7
            answers = probe(server.url, keys["analyst"], count=20, timeout=PROBE_TIMEOUT)
            # the idle clients are still usable afterwards
            assert all(c.get("/v1/me").status_code == 200 for c in idle)
        finally:
            for c in idle:
                c.close()
    assert None not in answers, answers


def test_a_request_still_incomplete_after_the_header_timeout_is_closed(
        tmp_path: Path, sqlite_template: Path) -> None:
    url, keys = _keys(tmp_path, sqlite_template)
    env = {"PRIVACY_API_HEADER_TIMEOUT": "2", "PRIVACY_API_MIN_BODY_RATE": "16384"}
    with gunicorn(url, workers=1, threads=2, served_config=True, env=env) as server:
        attack = SlowClients(_port(server.url), interval=0.2)
        attack.add(slow_header_request())
        head, body = trickled_body_request("/v1/datasets/1/records", keys["owner"])
        attack.add(body, head)
        attack.start()
        try:
            for _ in range(150):  # bounded: 15 s at most, the deadline is 2 s
                if attack.closed_by_server == 2:
                    break
                time.sleep(0.1)
        finally:
            attack.stop()
        assert attack.closed_by_server == 2
        # A body that keeps to the minimum rate is not cut: 96 KiB over ~3 s, past the deadline.
        with socket.create_connection(("127.0.0.1", _port(server.url)), timeout=10) as sock:
            rows = b"[" + b",".join([b'{"a": 1}'] * 10_000)  # ~90 KiB, then the closing bracket
            head = (f"POST /v1/datasets/999/records HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: Bearer {keys['owner']}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(rows) + 1}\r\nConnection: close\r\n\r\n").encode()
            sock.sendall(head)
            for i in range(0, len(rows), len(rows) // 30 + 1):
                sock.sendall(rows[i:i + len(rows) // 30 + 1])
                time.sleep(0.1)
            sock.sendall(b"]")
            reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 404"), reply[:200]  # the app saw it: no dataset 999
