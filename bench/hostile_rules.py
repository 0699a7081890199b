"""Hostile rules (issue 13 §4): how fast `rules check` refuses each one, and what the worst
accepted rule costs a webhook through real gunicorn, side by side with the default rules.

Part 1 runs `flask --app app rules check FILE` in a new process on every file of
tests/hostile_rules.py (and, with `--baseline DIR`, in an older tree too): wall time, peak RSS,
what it said. Part 2 serves caselink with rules.yaml, and with tests/hostile_rules.WORST_ACCEPTED
in front of it, taking turns over rounds of webhooks: p50 and p99 of each, and their ratio.
Part 3 serves a rule whose pattern RE2 runs slowly (`[ab]*a[ab]{900}c`, 0.4 s on 64 KiB) and
posts 32 webhooks at once, each with 8 such values, while asking /healthz every 50 ms: /healthz
p99 and worst, and how long the webhooks took (with `--baseline`, the older tree's service too).
Part 4 posts one Alertmanager group of 2,000 alerts against 9,999 cheap rules: how long its answer
took, /healthz meanwhile, and how long until every alert's link was planned.

    python bench/hostile_rules.py                         # about two minutes
    python bench/hostile_rules.py --baseline db0c4b7      # also the older tree (a folder or a revision)
    python bench/hostile_rules.py --only-costly --baseline e85938c   # part 4 alone
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import harness

from caselink.errors import RulesError
from caselink.rules import load_rules
from handlers import REGISTRY
from tests import hostile_rules as hostile

ROOT = harness.ROOT
FIXTURE = ROOT / "tests" / "fixtures" / "datadog" / "incident-created.json"


# -- part 1: rules check on each hostile file ------------------------------------------------


def check(tree: Path, rules_file: Path, timeout: float) -> dict[str, Any]:
    """`flask --app app rules check FILE` in `tree`: seconds, peak RSS (MB), exit code, first line."""
    env = harness.base_env(DATABASE_URL=f"sqlite:///{rules_file.parent / 'check.db'}", PYTHONPATH=str(tree))
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "rules", "check", str(rules_file)],
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    output = process.stdout.read() if process.stdout else b""
    _, status, usage = os.wait4(process.pid, 0)
    timer.cancel()
    seconds = time.perf_counter() - started
    killed = seconds >= timeout
    process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "exit": process.returncode,
        "killed_after_timeout": killed,
        "said": output.decode(errors="replace").splitlines()[0][:160] if output else "",
    }


def python_start(tree: Path, workdir: Path) -> float:
    """What `rules check` costs before it reads the file: the interpreter, Flask and caselink's imports."""
    empty = workdir / "valid.yaml"
    empty.write_text("version: 1\nrules: []\n", encoding="utf-8")
    return min(check(tree, empty, 60)["seconds"] for _ in range(3))


def part1(workdir: Path, baseline: Path | None, timeout: float) -> dict[str, Any]:
    trees = {"new": ROOT} | ({"baseline": baseline} if baseline else {})
    startup = {name: python_start(tree, workdir) for name, tree in trees.items()}
    results: dict[str, Any] = {"python_and_imports_seconds": startup, "files": {}}
    print(f"python and imports: {startup}")
    print(f"{'file':26} {'bytes':>11}  {'load s':>6}  " + "  ".join(f"{name + ' s':>10} {'MB':>6}" for name in trees))
    for name, make in (hostile.REFUSED | hostile.REFUSED_ONCE_READ).items():
        path = workdir / f"{name}.yaml"
        path.write_text(make(), encoding="utf-8")
        row = {tree_name: check(tree, path, timeout) for tree_name, tree in trees.items()}
        started = time.perf_counter()
        try:
            load_rules(path, sources=tuple(REGISTRY))
        except RulesError:
            pass
        row["new"]["load_seconds"] = round(time.perf_counter() - started, 3)
        results["files"][name] = {"bytes": path.stat().st_size, **row}
        cells = "  ".join(
            f"{('>' if r['killed_after_timeout'] else '') + format(r['seconds'], '.2f'):>10} {r['peak_rss_mb']:>6}"
            for r in row.values()
        )
        load = row["new"]["load_seconds"]
        print(f"{name:26} {path.stat().st_size:>11,}  {load:>6.3f}  {cells}   {row['new']['said'][:60]}")
    return results


# -- part 2: webhook latency with the worst accepted rule ------------------------------------


def default_rules_after(rules: str, path: Path) -> Path:
    """rules.yaml with `rules` (a YAML list's items) in front of its own, written to `path`."""
    default = (ROOT / "rules.yaml").read_text(encoding="utf-8")
    path.write_text(default.replace("\nrules:\n", "\nrules:\n" + rules, 1), encoding="utf-8")
    return path


def incident_body(n: int, **changes: Any) -> bytes:
    """The Datadog incident fixture with a new delivery id and `changes` to its payload."""
    payload = json.loads(FIXTURE.read_text())
    payload["id"] = f"{time.time_ns()}{n}"
    payload.update(changes)
    return json.dumps(payload).encode()


def rules_with_worst(workdir: Path) -> Path:
    return default_rules_after(hostile.WORST_ACCEPTED.split("rules:\n", 1)[1], workdir / "worst.yaml")


def webhook_body(n: int) -> bytes:
    incident = json.loads(FIXTURE.read_text())["incident"]
    incident["title"] = hostile.HOSTILE_TITLE + " see OPS-42"
    incident["message"] = "x" * 30 + " tracked in OPS-42"
    return incident_body(n, incident=incident)


def load(port: int, requests: int, connections: int) -> list[float]:
    """`requests` webhooks over `connections` keep-alive connections; each one's latency in seconds."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        for n in counter:
            body = webhook_body(n)
            started = time.perf_counter()
            connection.request(
                "POST",
                "/webhooks/datadog",
                body,
                {"Content-Type": "application/json", "Authorization": f"Bearer {harness.WEBHOOK_SECRET}"},
            )
            answer = connection.getresponse()
            answer.read()
            mine.append(time.perf_counter() - started)
            if answer.status != 202:
                raise RuntimeError(f"webhook answered {answer.status}")
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def part2(run: harness.Run, rounds: int, requests: int, connections: int) -> dict[str, Any]:
    worst = rules_with_worst(run.workdir)
    targets = {"default rules": ROOT / "rules.yaml", "worst accepted rule + default rules": worst}
    servers = {name: harness.caselink(f"web{index}", run, RULES_FILE=path)[0].port
               for index, (name, path) in enumerate(targets.items())}
    figures: dict[str, dict[str, list[float]]] = {name: {"p50": [], "p99": []} for name in targets}
    for number in range(1, rounds + 1):
        for name in harness.rotated(list(servers), number):
            load(servers[name], 50, connections)  # warm-up
            latencies = sorted(load(servers[name], requests, connections))
            figures[name]["p50"].append(statistics.median(latencies))
            figures[name]["p99"].append(harness.percentile(latencies, 99))
    summary = {name: {key: round(statistics.median(values) * 1000, 2) for key, values in figure.items()}
               for name, figure in figures.items()}
    default, worst = summary.values()
    ratios = {key: round(worst[key] / default[key], 2) for key in ("p50", "p99")}
    for name, figure in summary.items():
        print(f"{name:38} p50 {figure['p50']:7.2f} ms   p99 {figure['p99']:7.2f} ms")
    print(f"{'ratio (worst / default)':38} p50 {ratios['p50']:7.2f}      p99 {ratios['p99']:7.2f}")
    return {"milliseconds": summary, "ratio": ratios, "rounds": figures}


# -- part 3: a pattern RE2 runs slowly, many webhooks at once -----------------------------------

SLOW_FIELDS = 8


def slow_rules(workdir: Path) -> Path:
    slow = "".join(
        f"  - name: slow-{n}\n    when: [{{field: payload.f{n}, matches: '{hostile.SLOW_ON_AB}'}}]\n"
        "    link: {relationship: CAUSES, parent: event, child: {type: CASE, id: OPS-1}}\n"
        for n in range(SLOW_FIELDS)
    )
    return default_rules_after(slow, workdir / "slow.yaml")


def slow_body(n: int) -> bytes:
    return incident_body(n, **{f"f{field}": hostile.AB_64K for field in range(SLOW_FIELDS)})


def post(port: int, body: bytes) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    connection.request("POST", "/webhooks/datadog", body,
                       {"Content-Type": "application/json", "Authorization": f"Bearer {harness.WEBHOOK_SECRET}"})
    answer = connection.getresponse()
    answer.read()
    connection.close()
    if answer.status != 202:
        raise RuntimeError(f"webhook answered {answer.status}")
    return time.perf_counter() - started


def healthz_during(port: int, work: Any) -> list[float]:
    """/healthz latencies, one request every 50 ms on a connection of its own, while `work()` runs."""
    done = threading.Event()
    latencies: list[float] = []

    def ask() -> None:
        while not done.is_set():
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            started = time.perf_counter()
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            latencies.append(time.perf_counter() - started)
            connection.close()
            done.wait(0.05)

    asker = threading.Thread(target=ask)
    asker.start()
    try:
        work()
    finally:
        done.set()
        asker.join()
    return latencies


def part3(run: harness.Run, baseline: Path | None, rounds: int, webhooks: int) -> dict[str, Any]:
    rules = slow_rules(run.workdir)
    trees = {"now": ROOT, **({"baseline": baseline} if baseline else {})}
    servers = {name: harness.caselink(f"slow-{name}", run, root=tree, RULES_FILE=rules)[0].port
               for name, tree in trees.items()}
    figures: dict[str, dict[str, list[float]]] = {name: {"healthz p99": [], "healthz max": [], "webhook p50": [],
                                                         "webhooks took": []} for name in servers}
    for number in range(1, rounds + 1):
        for name in harness.rotated(list(servers), number):
            port, answers = servers[name], []

            bodies = [slow_body(n) for n in range(webhooks)]  # new delivery ids each round

            def burst(port: int = port, answers: list[float] = answers, bodies: list[bytes] = bodies) -> None:
                threads = [threading.Thread(target=lambda body=body: answers.append(post(port, body)))
                           for body in bodies]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()

            started = time.perf_counter()
            healthz = sorted(healthz_during(port, burst))
            took = time.perf_counter() - started
            if len(answers) != webhooks:
                raise RuntimeError(f"{name}: {webhooks - len(answers)} webhooks failed")
            figures[name]["healthz p99"].append(harness.percentile(healthz, 99))
            figures[name]["healthz max"].append(healthz[-1])
            figures[name]["webhook p50"].append(statistics.median(answers))
            figures[name]["webhooks took"].append(took)
    summary = {name: {key: round(statistics.median(values), 3) for key, values in figure.items()}
               for name, figure in figures.items()}
    for name, figure in summary.items():
        print(f"{name:10} " + "   ".join(f"{key} {value:6.3f} s" for key, value in figure.items()))
    return {"seconds": summary, "rounds": figures}


# -- part 4: a group that costs more to evaluate than a request may spend ----------------------

GROUP_FIXTURE = ROOT / "tests" / "fixtures" / "alertmanager" / "firing-group.json"
AM_SECRET = "bench-alertmanager-token"


def costly_rules(workdir: Path, rules: int) -> Path:
    """`rules` cheap rules, each its own `contains`, all sharing one find: every alert matches one."""
    path = workdir / "costly.yaml"
    path.write_text("version: 1\nrules:\n" + "".join(
        f"  - name: r{n}\n    on: {{source: alertmanager}}\n    when: [{{field: title, contains: '<{n}>'}}]\n"
        "    link: {relationship: CAUSES, parent: {type: CASE, find: {in: [title], pattern: 'AM-[0-9]+'}},"
        " child: {type: CASE, id: OPS-1}}\n"
        for n in range(rules)), encoding="utf-8")
    return path


def costly_group(alerts: int, rules: int) -> bytes:
    group = json.loads(GROUP_FIXTURE.read_text())
    alert = group["alerts"][0]
    group["alerts"] = [{**alert, "fingerprint": f"{time.time_ns():x}{n:06}",
                        "annotations": {"summary": f"disk full <{n % rules}> AM-{n}"}} for n in range(alerts)]
    return json.dumps(group).encode()


def links_planned(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("caselink_links{")))


def part4(run: harness.Run, baseline: Path | None, rules: int, alerts: int, timeout: float) -> dict[str, Any]:
    """One Alertmanager group of `alerts` alerts against `rules` rules: how long its answer took,
    /healthz meanwhile, and how long until every alert's link was planned (deferred ones included)."""
    path = costly_rules(run.workdir, rules)
    trees = {"now": ROOT, **({"baseline": baseline} if baseline else {})}
    summary: dict[str, dict[str, Any]] = {}
    for name, tree in trees.items():
        port = harness.caselink(f"costly-{name}", run, root=tree, RULES_FILE=path,
                                ALERTMANAGER_WEBHOOK_SECRET=AM_SECRET)[0].port
        body = costly_group(alerts, rules)
        answer: dict[str, Any] = {}

        def send(port: int = port, body: bytes = body, answer: dict[str, Any] = answer) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            started = time.perf_counter()
            connection.request("POST", "/webhooks/alertmanager", body,
                               {"Content-Type": "application/json", "Authorization": f"Bearer {AM_SECRET}"})
            reply = connection.getresponse()
            data = json.loads(reply.read())
            connection.close()
            answer.update(status=reply.status, seconds=time.perf_counter() - started,
                          deferred=sum(1 for event in data.get("events", ()) if event.get("evaluation") == "deferred"))

        webhooks: list[float] = []
        done = threading.Event()

        def others(port: int = port, webhooks: list[float] = webhooks, done: threading.Event = done) -> None:
            """Another sender's webhook every 0.2 s: what the group and its deferred evaluations cost it."""
            while not done.is_set():
                webhooks.append(post(port, incident_body(len(webhooks))))
                done.wait(0.2)

        def send_and_wait(port: int = port, send: Any = send, started: float = time.perf_counter()) -> None:
            send()
            # Scraped once a second: /metrics with 9,999 rules' series is not free.
            while links_planned(port) < alerts and time.perf_counter() - started < timeout:
                time.sleep(1.0)

        started = time.perf_counter()
        other = threading.Thread(target=others)
        other.start()
        try:
            # /healthz while the group is answered and while its deferred events are evaluated.
            healthz = sorted(healthz_during(port, send_and_wait))
        finally:
            done.set()
            other.join()
        planned = links_planned(port)
        summary[name] = {
            "status": answer.get("status"), "answered after s": round(answer.get("seconds", 0.0), 3),
            "deferred": answer.get("deferred"), "healthz p99 s": round(harness.percentile(healthz, 99), 3),
            "healthz max s": round(healthz[-1], 3),
            "other webhooks p50 s": round(statistics.median(webhooks), 3) if webhooks else None,
            "other webhooks p99 s": round(harness.percentile(sorted(webhooks), 99), 3) if webhooks else None,
            "links planned": planned,
            "every link planned after s": round(time.perf_counter() - started, 3) if planned >= alerts else None,
        }
        print(f"{name:10} " + "   ".join(f"{key} {value}" for key, value in summary[name].items()))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="an older tree (a folder or a git revision) to measure too")
    parser.add_argument("--slow-webhooks", type=int, default=32, help="webhooks posted at once in part 3")
    parser.add_argument("--check-timeout", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--skip-webhooks", action="store_true")
    parser.add_argument("--costly-rules", type=int, default=9999, help="rules in part 4")
    parser.add_argument("--costly-alerts", type=int, default=2000, help="alerts in part 4's one group")
    parser.add_argument("--costly-timeout", type=float, default=300.0)
    parser.add_argument("--only-costly", action="store_true", help="run part 4 alone")
    harness.add_run_options(parser)
    args = parser.parse_args(argv)
    content: dict[str, Any] = {}
    with harness.Run("hostile-rules", args, argv) as run:
        baseline = harness.source_tree(args.baseline, run.workdir) if args.baseline else None
        if not args.only_costly:
            print("== rules check on each hostile file ==")
            content["rules_check"] = part1(run.workdir, baseline, args.check_timeout)
        if not args.skip_webhooks and not args.only_costly:
            print(f"== webhook latency through gunicorn: {args.rounds} rounds x {args.requests} webhooks"
                  f" on {args.connections} connections ==")
            content["webhooks"] = part2(run, args.rounds, args.requests, args.connections)
            print(f"== {args.slow_webhooks} webhooks at once, each with {SLOW_FIELDS} values a pattern RE2 runs"
                  f" slowly on; /healthz asked every 50 ms: {args.rounds} rounds ==")
            content["slow_search"] = part3(run, baseline, args.rounds, args.slow_webhooks)
        if not args.skip_webhooks:
            print(f"== one Alertmanager group of {args.costly_alerts} alerts against {args.costly_rules} rules;"
                  " /healthz asked every 50 ms ==")
            content["costly_group"] = part4(run, baseline, args.costly_rules, args.costly_alerts,
                                            args.costly_timeout)
    run.write(**content)


if __name__ == "__main__":
    main()
