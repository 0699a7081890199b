"""Regular expressions from rules, run on RE2 so that no pattern can hang a webhook.

Python's `re` backtracks: `(a+)+$` against thirty characters takes minutes. RE2
(google-re2) runs in time linear in the text, as Alertmanager and PagerDuty do
for their users' patterns, and refuses the few constructs that need
backtracking: backreferences and look-around. `compile_rule_regex` says which
one a pattern used and how to do without it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import re2

# RE2's own cap on a compiled pattern is 8 MiB of memory; one rules file holds many
# patterns, so each gets less. The default rules use about 400 instructions.
MAX_PROGRAM_SIZE = 5000
_OPTIONS_MEMORY = 1 << 20

# What RE2 cannot run, how to recognise it in a pattern, and what to write instead.
_UNSUPPORTED = (
    (
        re.compile(r"\(\?<?[=!]"),
        "look-around ((?=…), (?!…), (?<=…), (?<!…))",
        "spell the exclusion with character classes, or match the text and add a not_matches condition",
    ),
    (
        re.compile(r"\\[1-9]|\(\?P=\w+\)|\\g<\w+>|\\k<\w+>"),
        "a backreference (\\1, (?P=name))",
        "RE2 cannot match a repeat of an earlier group; match the shape of the text instead",
    ),
    (
        re.compile(r"\(\?>|[*+?}][+]"),
        "an atomic group or a possessive quantifier",
        "drop it: RE2 never backtracks, so it is not needed",
    ),
    (re.compile(r"\\Z"), "\\Z", "write \\z (end of text) or $"),
)


class Regex:
    """A compiled RE2 pattern; `search` and `finditer` behave as `re`'s."""

    __slots__ = ("_compiled", "pattern")

    def __init__(self, pattern: str, compiled: re2._Regexp) -> None:  # noqa: SLF001 - re2 exports no public type
        self.pattern = pattern
        self._compiled = compiled

    @property
    def groupindex(self) -> dict[str, int]:
        return dict(self._compiled.groupindex)

    @property
    def groups(self) -> int:
        return self._compiled.groups

    def search(self, text: str) -> re2._Match | None:  # noqa: SLF001
        return self._compiled.search(text)

    def finditer(self, text: str) -> Iterator[re2._Match]:  # noqa: SLF001
        return self._compiled.finditer(text)


def compile_rule_regex(pattern: str, *, ignore_case: bool = False) -> Regex:
    """Compile a rule's pattern for RE2; ValueError says what RE2 refused and what to write instead."""
    options = re2.Options()
    options.log_errors = False
    options.max_mem = _OPTIONS_MEMORY
    options.case_sensitive = not ignore_case
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        for construct, found, hint in _UNSUPPORTED:
            if construct.search(pattern):
                raise ValueError(f"RE2 does not support {found}: {hint}") from None
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"not a valid RE2 regular expression: {reason}") from None
    if compiled.programsize > MAX_PROGRAM_SIZE:
        raise ValueError(
            f"the pattern compiles to {compiled.programsize} RE2 instructions, more than {MAX_PROGRAM_SIZE}: "
            "large counted repeats ({1000}) multiply it; use + or a smaller count"
        )
    return Regex(pattern, compiled)
