"""Gunicorn defaults for privacy-api (override on the command line)."""

import os

bind = os.environ.get("PRIVACY_API_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("PRIVACY_API_WORKERS", "2"))
threads = int(os.environ.get("PRIVACY_API_THREADS", "4"))
# Cold decryption of a large dataset can take seconds on first query.
timeout = 120
graceful_timeout = 30
accesslog = "-"
# The access log carries method, path and status only; never bodies or the Authorization header,
# and never the query string: %(r)s (the request line) and %(q)s would write `?api_key=...` or
# any other secret a client puts in a URL. %(U)s is the path alone.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'


def on_starting(server: object) -> None:
    """Empty the Prometheus multi-process directory: stale files from a previous run would be
    summed into this run's metrics."""
    import shutil
    from pathlib import Path

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        path = Path(directory)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
