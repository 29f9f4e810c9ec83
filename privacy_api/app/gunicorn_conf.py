"""Gunicorn defaults for privacy-api (override on the command line)."""

import os

bind = os.environ.get("PRIVACY_API_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("PRIVACY_API_WORKERS", "2"))
threads = int(os.environ.get("PRIVACY_API_THREADS", "4"))
# waitress inside each gunicorn worker: requests are read in full on a non-blocking I/O thread
# before a thread runs them, so slow or idle clients cannot pin the threads (docs/operations.md).
# PRIVACY_API_WORKER_CLASS=gthread brings back the old behaviour (the bench compares them).
worker_class = os.environ.get("PRIVACY_API_WORKER_CLASS", "privacy_api.app.serving.WaitressWorker")
# Cold decryption of a large dataset can take seconds on first query.
timeout = 120
graceful_timeout = 30
accesslog = "-"
# The access log carries method, path and status only; never bodies or the Authorization header,
# and never the query string: %(r)s (the request line) and %(q)s would write `?api_key=...` or
# any other secret a client puts in a URL. %(U)s is the path alone.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'


# The master's lease on the instance's decrypted-copy directory (privacy_api/storage/instance_dir.py).
_lease: list[object] = []


def on_starting(server: object) -> None:
    """Empty the Prometheus multi-process directory: stale files from a previous run would be
    summed into this run's metrics. Take the lease on the shared column directory (removing
    copies a dead server left behind)."""
    import shutil
    from pathlib import Path

    _take_lease()

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        path = Path(directory)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)


def on_exit(server: object) -> None:
    """The decrypted copies on tmpfs must not outlive the service: remove them (unless another
    live server of the same instance still uses them)."""
    from privacy_api.storage.instance_dir import InstanceLease

    while _lease:
        lease = _lease.pop()
        if isinstance(lease, InstanceLease):
            lease.release()


def _take_lease() -> None:
    from privacy_api.runtime.config import ConfigError, default_instance_path, load_settings
    from privacy_api.storage.instance_dir import lease_for

    try:
        settings = load_settings(default_instance_path())
    except ConfigError:
        return  # the workers will fail to start with the same error, and say why
    lease = lease_for(settings.shared_cache_dir, settings.database_url)
    if lease is not None:
        _lease.append(lease)
