"""gunicorn settings for caselink; gunicorn reads this file from the working directory.

PORT and WEB_CONCURRENCY are read the way every PaaS sets them. Before any
worker starts, the master checks the configuration, the database schema and
the rules, and refuses to start with a message that says what to fix.
"""

import contextlib
import fcntl
import gc
import os
import shutil
import sys
import tempfile


def _whole_number(name, default):
    value = os.environ.get(name, "").strip() or default
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"caselink cannot start: {name}={value!r} must be a whole number of at least 1")
    return int(value)


bind = f"0.0.0.0:{_whole_number('PORT', '8000')}"
workers = _whole_number("WEB_CONCURRENCY", "2")
# gthread, with each request read whole in the worker's event loop before a thread
# takes it (slow clients tie no thread) and connections shared out evenly between
# the workers: caselink/serving.py says how and why.
worker_class = "caselink.serving.BufferingWorker"
# Webhooks wait on the database (a write lock shared by the processes, or
# PostgreSQL's round trips), and concurrent ones share a transaction: eight
# threads keep the CPUs busy and the transactions full (bench/ack_throughput.py).
threads = _whole_number("GUNICORN_THREADS", "8")
# PaaS send SIGTERM and allow about 30 s before SIGKILL.
graceful_timeout = 25
timeout = 30
keepalive = 5
accesslog = None  # caselink logs one line per webhook itself
errorlog = "-"
capture_output = False
# gunicorn's control socket sits at one fixed path per user; several instances
# on one machine (tests, benchmarks) would fight over it, and caselink needs none.
control_socket_disable = True

_metrics_dir = None
_delivery_lock = None


def on_starting(server):
    global _metrics_dir, _delivery_lock
    _delivery_lock = os.path.join(tempfile.gettempdir(), f"caselink-delivery-{os.getpid()}.lock")
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Every worker process writes its counters here, so /metrics adds them up.
        _metrics_dir = tempfile.mkdtemp(prefix="caselink-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir

    from caselink import logs
    from caselink.config import Settings
    from caselink.errors import CaselinkError
    from caselink.service import preflight
    from handlers import REGISTRY

    try:
        settings = Settings.from_env()
        logs.configure(settings.log_level, settings.log_format)
        notes = preflight(settings, REGISTRY)
    except CaselinkError as exc:
        # A store that cannot be used is named by its DATABASE_URL (password masked).
        print(f"caselink cannot start: {getattr(exc, 'operator', exc.message)}", file=sys.stderr, flush=True)
        sys.exit(1)
    from caselink import metrics

    # This process's sample of a gauge every process reports; the rules just loaded.
    metrics.RULES_LOADED.set(1)
    metrics.RULES_FILE_IN_FORCE.set(1)
    log = logs.get("start")
    for note in notes:
        if note.startswith("warning: "):
            log.warning(note.removeprefix("warning: "))
        else:
            log.info(note)
    if server.cfg.worker_class_str != worker_class:
        # GUNICORN_CMD_ARGS or the command line chose another worker class.
        log.warning(
            f"gunicorn's worker class is {server.cfg.worker_class_str}, not {worker_class}: connections are"
            " not shared out between the workers (a load balancer's pool may all go to one), and slow"
            " clients hold request threads (caselink/serving.py)"
        )


def post_worker_init(worker):
    from caselink import logs

    # Request threads queue their log line; a thread of its own writes the lines,
    # so none of them waits on stdout (a pipe a log router may drain slowly).
    logs.write_in_background()
    # gunicorn's own warnings (an invalid request, a socket error) are written by request
    # threads too: they go the same way, or a stalled pipe would hold those threads.
    logs.route_through_queue(worker.log.error_log)
    # Everything built so far lives as long as the process; keep the garbage
    # collector from walking it again and again under load.
    gc.freeze()
    # A worker no request reaches still follows the rules file (readiness, gauges, reloads).
    worker.wsgi.extensions["caselink"].rules.watch()
    # A transaction under load waits for the webhooks of the process's other
    # requests to join it: one per request thread, or per connection the process
    # holds when it holds fewer (gunicorn deals connections out unevenly, and a
    # batch the size of the thread count would never fill).
    threads = worker.cfg.threads
    worker.wsgi.extensions["caselink"].store.expect_concurrent_writers(
        lambda: min(threads, getattr(worker, "conns_in_use", threads))
    )
    # One delivery worker per gunicorn instance, in whichever process holds this
    # lock: its rate-limit budget is then the instance's, and when that process
    # dies the lock passes to the process gunicorn starts in its place.
    handle = open(_delivery_lock, "a")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return
    worker.caselink_delivery_lock = handle
    worker.wsgi.extensions["caselink"].start_worker()


def worker_exit(server, worker):
    from caselink import logs

    service = getattr(worker, "wsgi", None)
    if service is not None and "caselink" in getattr(service, "extensions", {}):
        service.extensions["caselink"].stop_worker(grace=graceful_timeout - 5)
    logs.flush()  # every line logged, the delivery worker's last ones included, before the process ends


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
    if _delivery_lock:
        with contextlib.suppress(OSError):
            os.remove(_delivery_lock)
