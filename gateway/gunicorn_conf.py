"""gunicorn's configuration for ``smsgw api`` and the container (``-c`` this file).

Values can be overridden on the command line (``smsgw api --bind --workers``) or by gunicorn's
own ``GUNICORN_CMD_ARGS``.
"""

import os

# The API, and /metrics on a port of its own (SMSGW_METRICS_BIND; empty: on the API's port).
bind = [os.environ.get("SMSGW_BIND", "0.0.0.0:8080")]
if os.environ.get("SMSGW_METRICS_BIND", "0.0.0.0:9090"):
    bind.append(os.environ.get("SMSGW_METRICS_BIND", "0.0.0.0:9090"))
workers = int(os.environ.get("SMSGW_API_WORKERS", "2"))
# gevent: a slow or idle client holds a greenlet, not one of a few sync workers or threads,
# so slowloris sockets cannot take the API's capacity (tests/test_api_server.py measures it).
# Put a buffering reverse proxy in front in production anyway (README: "Behind a proxy").
worker_class = "gevent"
worker_connections = int(os.environ.get("SMSGW_API_CONNECTIONS", "1000"))
# A request does validation and a few Redis round trips; 30 s means something is stuck.
timeout = 30
# SIGTERM: stop accepting, let requests in flight finish for up to this long.
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so a slow leak never becomes an outage.
max_requests = 10000
max_requests_jitter = 1000
# gunicorn's control socket defaults to ~/.gunicorn/gunicorn.ctl, shared by every gunicorn of the
# user; smsgw keeps it in its run folder, or has none.
if os.environ.get("SMSGW_RUN_DIR"):
    control_socket = os.path.join(os.environ["SMSGW_RUN_DIR"], "gunicorn.ctl")
else:
    control_socket_disable = True
accesslog = "-"
# The provider's push path carries its secret and mobiles: logged by shape only.
logger_class = "gateway.access_log.AccessLogger"
errorlog = "-"
loglevel = "info"
# JSON lines like the workers (SMSGW_LOG_FORMAT=text for humans).
logconfig_dict = __import__("workers.logs", fromlist=["config_dict"]).config_dict(
    "INFO", os.environ.get("SMSGW_LOG_FORMAT", "json"), {"request_id": {"()": "gateway.access_log.RequestIdFilter"}}
)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """The app is loaded: what is alive now lives as long as the process, and a full garbage
    collection need not walk it each time (``workers.runtime.freeze_startup_heap``)."""
    from workers.runtime import freeze_startup_heap

    worker.log.info("startup heap frozen: %d objects the garbage collector no longer walks", freeze_startup_heap())


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """prometheus-client's multiprocess mode: forget the metrics files of a dead worker."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    """A worker stopping (SIGTERM, recycled after max_requests) writes its pending counts, and
    gives its startup heap back to the collector (``post_worker_init`` froze it): left frozen,
    logging's handlers outlive gevent's thread module at the interpreter's teardown, and every
    stop prints an ignored TypeError from ``logging._removeHandlerRef``."""
    import gc

    from workers.tally import flush_all

    flush_all()
    gc.unfreeze()
