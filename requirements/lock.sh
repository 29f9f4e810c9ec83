#!/usr/bin/env bash
# Hashed lock files from pyproject.toml's ranges, third-party packages only: the project itself (and any
# local distribution in this repository) is installed on top with `pip install --no-deps`.
#
#   requirements/lock.sh            re-lock after editing pyproject.toml: keeps every pin still allowed
#   requirements/lock.sh --upgrade  move every pin to the newest release the ranges allow
#   requirements/lock.sh --check    exit 1 (with a diff) unless the committed locks are exactly what
#                                   re-locking gives; run by CI before the tests
#
# Files: lock.txt (dev + test: what `make serve` / `make test` install), runtime.txt (the service
# alone, for production images; every pin equal to lock.txt's), tools.txt (pip and uv themselves).
#
# Reproducible: every run resolves against the index as it was at one instant (uv's --exclude-newer),
# recorded in lock.txt's header, so --check gives the same answer tomorrow as today whatever PyPI has
# released since; a re-lock (or --upgrade) moves that instant to now.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
uv="${UV:-$root/.venv/bin/uv}"
mode="${1:-}"

compile() {  # compile DIR INSTANT [extra uv flags]: (re)writes DIR/requirements/{lock,runtime,tools}.txt
  local dir="$1" instant="$2"; shift 2
  local flags=(--quiet --generate-hashes --universal --python-version 3.11 --exclude-newer "$instant" "$@")
  cd "$dir"
  # the repository's own distributions are inputs, never pins (they are installed with --no-deps)
  local own=(--no-emit-package privacy-api --no-emit-package privacy-secagg
             --no-emit-package privacy-client)
  "$uv" pip compile "${flags[@]}" "${own[@]}" requirements/dev.in -o requirements/lock.txt
  "$uv" pip compile "${flags[@]}" "${own[@]}" requirements/runtime.in -c requirements/lock.txt \
    -o requirements/runtime.txt
  "$uv" pip compile "${flags[@]}" requirements/tools.in -o requirements/tools.txt
}

recorded_instant() {
  sed -n 's/^#.* --exclude-newer \([^ ]*\).*/\1/p' "$root/requirements/lock.txt" | head -n 1
}

case "$mode" in
  "") compile "$root" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" ;;
  --upgrade) compile "$root" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --upgrade ;;
  --check)
    instant="$(recorded_instant)"
    if [ -z "$instant" ]; then
      echo "requirements/lock.txt records no --exclude-newer instant: run 'make lock'" >&2
      exit 1
    fi
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    cp "$root/pyproject.toml" "$root/README.md" "$tmp/"
    for dist in secagg privacy_client; do
      mkdir -p "$tmp/$dist" && cp "$root/$dist/pyproject.toml" "$root/$dist/README.md" "$tmp/$dist/"
      cp -r "$root/$dist/src" "$tmp/$dist/src"
    done
    cp -r "$root/requirements" "$tmp/requirements"
    # The committed locks are the preferences, as in a re-lock: unchanged inputs give them back byte
    # for byte; an edited range or dependency changes the output.
    (compile "$tmp" "$instant")
    status=0
    for f in lock.txt runtime.txt tools.txt; do
      diff -u "$root/requirements/$f" "$tmp/requirements/$f" || status=1
    done
    if [ "$status" != 0 ]; then
      echo "The lock files do not match pyproject.toml / requirements/*.in: run 'make lock' and commit." >&2
    fi
    exit "$status"
    ;;
  *) echo "usage: $0 [--upgrade|--check]" >&2; exit 2 ;;
esac
