"""Reading rules.yaml into a `RuleSet`: read the YAML, validate it, compile the rules.

`RulesError` lists every problem found, each with file:line.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
from collections.abc import Iterator
from collections.abc import Sequence
from pathlib import Path

from caselink.errors import RulesError
from caselink.rules.evaluation import RuleSet
from caselink.rules.reader import MAX_FILE_BYTES
from caselink.rules.reader import MAX_RULES
from caselink.rules.reader import read_yaml
from caselink.rules.validation import Validator


def load_rules(path: str | os.PathLike[str], *, sources: Sequence[str] | None = None) -> RuleSet:
    """Read and validate a rules file; RulesError lists every problem with file:line."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            # Read one byte past the cap, so an oversized file is refused without reading all of it.
            content = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise RulesError([f"{path}: cannot read the rules file: {exc.strerror}"]) from None
    if len(content) > MAX_FILE_BYTES:
        raise RulesError([_too_big(str(path), path.stat().st_size)])
    try:
        source_text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise RulesError([f"{path}: the rules file is not UTF-8 text"]) from None
    return parse_rules(source_text, str(path), sources=sources)


def parse_rules(source_text: str, filename: str = "<rules>", *, sources: Sequence[str] | None = None) -> RuleSet:
    """Validate rules from text; `sources` (handler names), when given, are the only valid on.source names."""
    encoded = source_text.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_FILE_BYTES:
        raise RulesError([_too_big(filename, len(encoded))])
    with _collector_paused():
        document = read_yaml(source_text, filename)
        validator = Validator(filename, sources)
        rules = validator.document(document)
    if validator.problems:
        raise RulesError(validator.problems)
    digest = hashlib.sha256(encoded).hexdigest()
    return RuleSet(tuple(rules), filename, digest, tuple(validator.warnings), source_text)


def _too_big(filename: str, size: int) -> str:
    return (
        f"{filename}: the rules file is {size:,} bytes; a rules file may hold at most {MAX_FILE_BYTES:,} bytes"
        f" and {MAX_RULES:,} rules"
    )


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    # A rules file makes tens of thousands of small objects that live until the load ends:
    # the cyclic collector would look at them again and again for nothing (a third of a load).
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
