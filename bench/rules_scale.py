"""How rules scale: load time, evaluation per event, trace size and memory with 10 to 10,000 rules.

Generates rule files of each size, every rule `on: {source: datadog, kind: [incident.created,
incident.updated]}` with three conditions (severity `in`, a `tags.service` equality, a `matches`
on the title) and a `find` child; 1 % of them (at least one) match the test event, the Datadog
incident fixture. Each size is measured in its own process, in-process (no HTTP): load
(parse, validate, compile), evaluation of the event p50/p99, the stored trace's JSON bytes, and the
memory the rules take (RSS from /proc). `--base DIR` measures another tree the same way (e.g.
`git archive 7197a0d | tar -x -C /tmp/rules-base`) and prints both side by side. `--acks` adds an
A/B of webhook acknowledgements per second through gunicorn: the default rules against 1,000 rules.

    python bench/rules_scale.py [--sizes 10,100,1000,10000] [--base DIR] [--acks] [--rounds 3]

See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path("tests/fixtures/datadog/incident-created.json")  # in every tree since the first release
RULE = """\
  - name: service-{index}-incident-causes-case
    on: {{source: datadog, kind: [incident.created, incident.updated]}}
    when:
      - {{field: severity, in: [SEV-1, SEV-2]}}
      - {{field: tags.service, equals: {service}}}
      - {{field: title, matches: '(?i)latency|errors|down'}}
    link:
      relationship: CAUSES
      parent: event
      child: {{type: CASE, find: {{in: [title, message], pattern: '\\b[A-Z][A-Z0-9]{{1,9}}-\\d+\\b'}}}}
"""


def rules_text(size: int) -> str:
    """`size` rules; every hundredth (the first included) is for the fixture's service, the others for another."""
    rules = (RULE.format(index=i, service="payments-api" if i % 100 == 0 else f"service-{i}") for i in range(size))
    return "version: 1\nrules:\n" + "".join(rules)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure(root: Path, rules_file: Path, seconds: float) -> dict[str, Any]:
    """In this process, with `root`'s caselink: load, evaluation, trace and memory figures."""
    sys.path.insert(0, str(root))
    from caselink.events import Headers
    from caselink.events import WebhookRequest
    from caselink.rules import load_rules
    from handlers import REGISTRY

    handler = REGISTRY["datadog"]
    body = (root / FIXTURE).read_bytes()
    request = WebhookRequest("datadog", body, Headers({"Content-Type": "application/json"}), "application/json", 0.0)
    [event] = handler.normalise(handler.parse(request), request)
    before = rss_kib()
    loads = []
    # The median of three loads (one for the largest files): the first also pays for warming caches.
    for _ in range(3 if rules_file.stat().st_size < 1_000_000 else 1):
        started = time.perf_counter()
        ruleset = load_rules(rules_file, sources=tuple(REGISTRY))
        loads.append(time.perf_counter() - started)
        if len(loads) == 1:
            memory = rss_kib() - before
    started = time.perf_counter()
    evaluation = ruleset.evaluate(event)
    first = time.perf_counter() - started
    times = []
    for _ in range(max(30, min(3000, int(seconds / max(first, 1e-6))))):
        started = time.perf_counter()
        evaluation = ruleset.evaluate(event)
        times.append(time.perf_counter() - started)
    times.sort()
    trace = json.dumps(evaluation.trace(), separators=(",", ":"))
    return {
        "rules": len(ruleset.rules),
        "matched": len(evaluation.matched),
        "load_ms": statistics.median(loads) * 1000,
        "eval_p50_ms": statistics.median(times) * 1000,
        "eval_p99_ms": times[min(len(times) - 1, round(0.99 * (len(times) - 1)))] * 1000,
        "evaluations": len(times),
        "trace_bytes": len(trace.encode()),
        "rss_mib": memory / 1024,
    }


def measure_in_subprocess(root: Path, rules_file: Path, seconds: float) -> dict[str, Any]:
    command = [sys.executable, __file__, "--measure", str(rules_file), "--root", str(root), "--seconds", str(seconds)]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measuring {rules_file} in {root} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


COLUMNS = (
    ("eval_p50_ms", "eval p50 ms", "{:.3f}"),
    ("eval_p99_ms", "eval p99 ms", "{:.3f}"),
    ("trace_bytes", "trace bytes", "{:,}"),
    ("load_ms", "load ms", "{:.0f}"),
    ("rss_mib", "RSS MiB", "{:.1f}"),
)


def print_table(results: dict[str, dict[int, dict[str, Any]]]) -> None:
    """One line per size and tree; with two trees, the second over the first at each size."""
    trees = list(results)
    print(f"{'rules':>6} {'tree':<5} {'matched':>7} " + " ".join(f"{label:>12}" for _, label, _ in COLUMNS))
    for size in results[trees[0]]:
        for tree in trees:
            figures = results[tree][size]
            cells = " ".join(f"{form.format(figures[key]):>12}" for key, _, form in COLUMNS)
            print(f"{size:>6} {tree:<5} {figures['matched']:>7} {cells}")
        if len(trees) == 2:
            old, new = results[trees[0]][size], results[trees[1]][size]
            ratios = " ".join(f"{new[key] / old[key] if old[key] else float('nan'):>12.2f}" for key, _, _ in COLUMNS)
            print(f"{'':>6} {'ratio':<5} {'':>7} {ratios}")


def acks(big_rules: Path, args: argparse.Namespace) -> None:
    """Webhook acks/s through gunicorn (dry-run, SQLite), default rules against `big_rules`, taking turns."""
    sys.path.insert(0, str(ROOT / "bench"))
    import harness

    files = {"default rules": ROOT / "rules.yaml", big_rules.stem: big_rules}
    args.warmup, args.connections, args.fixture = 1.0, 32, ROOT / FIXTURE
    rates: dict[str, list[float]] = {label: [] for label in files}
    with harness.Run("rules-acks", args, None) as run:
        servers = {label: harness.caselink(label.replace(" ", "-"), run, RULES_FILE=path)[0]
                   for label, path in files.items()}
        for number in range(1, args.rounds + 1):
            for label in harness.rotated(list(servers), number):
                rates[label].append(harness.measure(servers[label], "python", args, number).rps)
    medians = {label: statistics.median(values) for label, values in rates.items()}
    for label, values in rates.items():
        print(f"acks/s {label:>14}: median {medians[label]:.0f} (rounds {', '.join(f'{v:.0f}' for v in values)})")
    print(f"acks/s {big_rules.stem} / default rules: {medians[big_rules.stem] / medians['default rules']:.2f} "
          "(target >= 0.8)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,10000", help="Rule counts to generate and measure.")
    parser.add_argument("--base", type=Path, help="Another tree to measure the same way, printed beside this one.")
    parser.add_argument("--seconds", type=float, default=1.5, help="Evaluation time per size (at least 30 runs).")
    parser.add_argument("--acks", action="store_true", help="Also A/B webhook acks/s: default rules vs 1,000 rules.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of the acks A/B, taking turns.")
    parser.add_argument("--duration", type=float, default=5.0, help="Seconds measured per acks round and target.")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure is not None:
        print(json.dumps(measure(args.root.resolve(), args.measure, args.seconds)))
        return 0
    trees = {"this": ROOT} | ({"base": args.base.resolve()} if args.base else {})
    results: dict[str, dict[int, dict[str, Any]]] = {tree: {} for tree in trees}
    with tempfile.TemporaryDirectory(prefix="rules-scale-") as folder:
        files = {}
        for position, size in enumerate(int(size) for size in args.sizes.split(",")):
            files[size] = Path(folder) / f"rules-{size}.yaml"
            files[size].write_text(rules_text(size))
            # Alternate the trees, so the machine's noise falls on both.
            for tree in trees if position % 2 == 0 else reversed(list(trees)):
                results[tree][size] = measure_in_subprocess(trees[tree], files[size], args.seconds)
        print_table({tree: dict(sorted(figures.items())) for tree, figures in reversed(list(results.items()))})
        if args.acks:
            big = Path(folder) / "1000-rules.yaml"
            big.write_text(rules_text(1000))
            acks(big, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
