"""Where a webhook's time goes: caselink's POST /webhooks/datadog in one process, under cProfile.

Builds the app as gunicorn would (dry-run by default, a fresh SQLite file, the
repo's rules.yaml), posts the Datadog incident fixture N times with a new `id`
each time through Flask's test client, and prints the functions that take the
most time. No HTTP server and no concurrency: this is the CPU cost of one
acknowledgement, which is what limits throughput when the machine is busy.

    python bench/profile_webhook.py [--requests 2000] [--sort cumulative|tottime] [--live]
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import io
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

from harness import FIXTURE
from harness import WEBHOOK_SECRET
from harness import caselink_env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--sort", choices=("cumulative", "tottime"), default="cumulative")
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--live", action="store_true", help="set Datadog keys (nothing is called: no worker runs)")
    parser.add_argument("--fixture", type=Path, default=FIXTURE)
    parser.add_argument("--no-profile", action="store_true", help="only time the requests, without cProfile")
    parser.add_argument("--dump", type=Path, help="also write the raw profile here (for snakeviz, gprof2dot, …)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="caselink-profile-"))
    # Removed at exit, after caselink's metrics flush their counts into it (atexit runs last-registered first).
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    # Live: Datadog keys set, but nothing is called (no worker runs here).
    fake_url = "http://127.0.0.1:9" if args.live else None
    os.environ.update(caselink_env(f"sqlite:///{workdir / 'caselink.db'}", fake_url, PROMETHEUS_MULTIPROC_DIR=workdir))
    # caselink logs one line per webhook to stdout; under gunicorn that goes to a file or pipe.
    log = (workdir / "stdout.log").open("w")
    real_stdout, sys.stdout = sys.stdout, log
    try:
        from app import create_app
        from caselink import migrations

        app = create_app()
        service = app.extensions["caselink"]
        migrations.upgrade(service.store.engine)
        client = app.test_client()
        payload = json.loads(args.fixture.read_bytes())
        headers = {"Authorization": f"Bearer {WEBHOOK_SECRET}", "Content-Type": "application/json"}
        bodies = []
        for number in range(args.warmup + args.requests):
            payload["id"] = f"1{number:018d}"
            bodies.append(json.dumps(payload).encode())
        for body in bodies[: args.warmup]:
            assert client.post("/webhooks/datadog", data=body, headers=headers).status_code == 202
        profiler = cProfile.Profile()
        started = time.perf_counter()
        if not args.no_profile:
            profiler.enable()
        for body in bodies[args.warmup :]:
            status = client.post("/webhooks/datadog", data=body, headers=headers).status_code
            assert status == 202, status
        profiler.disable()
        elapsed = time.perf_counter() - started
        service.store.dispose()
    finally:
        sys.stdout = real_stdout
        log.close()
    how = "without a profiler" if args.no_profile else "under cProfile (which itself roughly doubles the time)"
    print(
        f"{args.requests} webhooks in {elapsed:.2f} s {how}: {elapsed / args.requests * 1000:.2f} ms each, "
        f"one at a time ({'live' if args.live else 'dry-run'})"
    )
    if args.no_profile:
        return 0
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    if args.dump:
        stats.dump_stats(str(args.dump))
    stats.sort_stats(args.sort).print_stats(args.top)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
