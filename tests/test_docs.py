"""The README and docs/ hold together: every relative link finds its file and heading, and the first webhook works."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.docs import DOCS
from tests.docs import README
from tests.docs import section
from tests.servers import ROOT
from tests.servers import Process
from tests.servers import free_port
from tests.servers import wait_for

FENCE = re.compile(r"^```.*?^```", flags=re.MULTILINE | re.DOTALL)
# [text](target) and ![alt](target); a target has no spaces and may carry a "title".
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#* *$", flags=re.MULTILINE)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file; a repeated heading gets -1, -2, … as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(path: Path) -> list[str]:
    """The relative links of `path` whose file does not exist or has no such heading."""
    broken = []
    for target in LINK.findall(FENCE.sub("", path.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not this repository's
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / unquote(file)).resolve() if file else path
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    return broken


DOCUMENTS = [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_points_at_an_existing_file_and_heading(path):
    assert broken_links(path) == []


def test_the_readme_links_every_document_in_docs():
    linked = {target.partition("#")[0] for target in LINK.findall(README.read_text())}

    assert {f"docs/{path.name}" for path in DOCS.glob("*.md")} - linked == set()


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("The operator's questions, one command each", "the-operators-questions-one-command-each"),
        ("Why a webhook is `400`", "why-a-webhook-is-400"),
        ("Datadog: webhook templates", "datadog-webhook-templates"),
        (
            "Other senders: PagerDuty, Opsgenie, Alertmanager, Grafana, Standard Webhooks",
            "other-senders-pagerduty-opsgenie-alertmanager-grafana-standard-webhooks",
        ),
        ("rules.yaml", "rulesyaml"),
        ("Per-rule statistics and retention", "per-rule-statistics-and-retention"),
    ],
)
def test_a_heading_anchor_is_the_one_github_gives_it(heading, anchor):
    assert slug(heading) == anchor


def test_a_link_to_a_missing_file_or_heading_is_reported(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## Present\n\n```\n## Inside a fence\n```\n")
    page = tmp_path / "page.md"
    page.write_text(
        "## Here\n\n[ok](other.md#present) [self](#here) [web](https://example.com/x#y)\n"
        "[gone](missing.md) [fenced](other.md#inside-a-fence) [nowhere](#there)\n"
    )

    assert broken_links(page) == [
        f"missing.md: no file {tmp_path / 'missing.md'}",
        "other.md#inside-a-fence: no heading #inside-a-fence in other.md",
        "#there: no heading #there in page.md",
    ]


def test_the_readmes_first_webhook_gets_the_answers_the_readme_shows(stack, tmp_path):
    """The README's start command in dry-run (no Datadog keys, no webhook secret), then its curl, run as written."""
    [curl] = re.findall(r"^```sh\n(curl .*?)^```", section(README, "A first webhook"), flags=re.MULTILINE | re.DOTALL)
    shown = [line.removeprefix("# ") for line in curl.splitlines() if line.startswith("# ")]
    port = free_port()
    unset = dict.fromkeys(("DD_API_KEY", "DD_APP_KEY", "DD_API_URL", "DATADOG_WEBHOOK_SECRET", "ADMIN_TOKEN"))
    serve = Process("serve", [str(ROOT / "bin" / "serve")], stack.env(PORT=str(port), **unset), tmp_path)
    stack.processes.append(serve)
    serve.start()
    wait_for(lambda: "Listening at" in serve.logs(), timeout=120, interval=0.1, message="bin/serve listening")

    def send() -> list[str]:
        command = curl.replace("localhost:8000", f"localhost:{port}")
        run = subprocess.run(["sh", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
        lines = run.stdout.splitlines()
        return [lines[0].strip(), lines[-1]]

    first, again = send(), send()

    assert first == shown
    assert again[0] == "HTTP/1.1 200 OK"
    assert json.loads(again[1]) == {
        "events": [{"id": 1, "kind": "incident.created", "duplicate": True, "links_planned": 0}],
        "links_planned": 0,
    }
