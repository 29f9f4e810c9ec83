"""Offline comparison of pyproject.toml's requirements with the hashed lock (requirements/lock.txt).

`requirements/lock.sh --check` is the exact check (re-locks and diffs; needs the index). This one needs
nothing but the two files: every requirement of the project (every extra included) must be met by a
locked pin, and every package the lock says is wanted by the project itself must still be a requirement.
"""

from __future__ import annotations

import re
import tomllib

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PROJECT = "privacy-api"
# The repository's own distributions: lock inputs, never pins (installed on top with --no-deps).
OWN = {"privacy-api", "privacy-secagg", "privacy-client"}
# The Python the lock is tested on (requirements/lock.sh: --python-version 3.11).
ENVIRONMENT: dict[str, str] = {
    **{k: str(v) for k, v in default_environment().items()},
    "python_version": "3.11", "python_full_version": "3.11.7", "sys_platform": "linux",
    "platform_system": "Linux", "implementation_name": "cpython", "platform_python_implementation": "CPython",
}

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def project_requirements(pyproject_text: str) -> list[Requirement]:
    """The project's dependencies plus every extra's, its own extras (``privacy-api[test]``) left out."""
    project = tomllib.loads(pyproject_text)["project"]
    lines = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        lines.extend(extra)
    reqs = [Requirement(line) for line in lines]
    return [r for r in reqs if canonicalize_name(r.name) not in OWN]


def locked_pins(lock_text: str) -> dict[str, Version]:
    """name -> version of every pin whose marker holds on the tested Python."""
    pins: dict[str, Version] = {}
    for line in lock_text.splitlines():
        m = _PIN.match(line)
        if m is None:
            continue
        name, version, marker = m.groups()
        parsed = Requirement(f"x; {marker}").marker if marker else None
        if parsed is not None and not parsed.evaluate(ENVIRONMENT):
            continue
        pins[canonicalize_name(name)] = Version(version)
    return pins


def wanted_by_project(lock_text: str) -> set[str]:
    """Packages the lock annotates as required by pyproject.toml itself (``# via privacy-api``;
    the server is a lock input as ``-e .``)."""
    wanted: set[str] = set()
    current: str | None = None  # the pin whose "# via" lines follow
    for line in lock_text.splitlines():
        m = _PIN.match(line)
        if m is not None:
            current = str(canonicalize_name(m.group(1)))
        elif current and re.match(rf"\s+#\s+(via\s+)?{PROJECT}(\s|$)", line):
            wanted.add(current)
    return wanted


def mismatches(pyproject_text: str, lock_text: str) -> list[str]:
    """Why the lock does not fit pyproject.toml; empty when it does."""
    pins = locked_pins(lock_text)
    problems: list[str] = []
    direct: set[str] = set()  # canonical names
    for req in project_requirements(pyproject_text):
        if req.marker is not None and not req.marker.evaluate(ENVIRONMENT):
            continue
        name = canonicalize_name(req.name)
        direct.add(name)
        if name not in pins:
            problems.append(f"{req} is required but not locked")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req} is required but the lock pins {name}=={pins[name]}")
    for dropped in sorted(wanted_by_project(lock_text) - direct):
        problems.append(f"the lock pins {dropped} for the project, which no longer requires it")
    return problems
