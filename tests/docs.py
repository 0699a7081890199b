"""Reading the README and docs/ in tests that keep them true."""

from __future__ import annotations

from pathlib import Path

from tests.servers import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
SENDERS = DOCS / "senders.md"
OPERATIONS = DOCS / "operations.md"


def section(path: Path, heading: str) -> str:
    """The `## ` section of `path` whose heading starts with `heading`, up to the next `## ` heading."""
    text = path.read_text()
    start = text.index("\n## " + heading) + 1
    end = text.find("\n## ", start)
    return text[start : end if end != -1 else len(text)]
