"""gunicorn's configuration for ``smsgw api`` and the container (``-c`` this file).

Values can be overridden on the command line (``smsgw api --bind --workers``) or by gunicorn's
own ``GUNICORN_CMD_ARGS``.
"""

import os

bind = os.environ.get("SMSGW_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("SMSGW_API_WORKERS", "2"))
worker_class = "sync"
# A request does validation and one Redis round trip; 30 s means something is stuck.
timeout = 30
# SIGTERM: stop accepting, let requests in flight finish for up to this long.
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so a slow leak never becomes an outage.
max_requests = 10000
max_requests_jitter = 1000
accesslog = "-"
errorlog = "-"
loglevel = "info"
# JSON lines like the workers (SMSGW_LOG_FORMAT=text for humans).
logconfig_dict = __import__("workers.logs", fromlist=["config_dict"]).config_dict(
    "INFO", os.environ.get("SMSGW_LOG_FORMAT", "json"), {"request_id": {"()": "gateway.context.RequestIdFilter"}}
)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """prometheus-client's multiprocess mode: forget the metrics files of a dead worker."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
