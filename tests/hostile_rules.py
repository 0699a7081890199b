"""Hostile rules files (issue 13 §4), shared by the tests and bench/hostile_rules.py.

Each is the text of a whole rules file that once hung or exhausted caselink;
`REFUSED` must each be refused by `rules check` within a second. `WORST_ACCEPTED`
is the costliest rule the checks let through, and it matches every webhook.
"""

from __future__ import annotations

import random
from collections.abc import Callable

_LINK = (
    "    link: {relationship: CAUSES, parent: event, child: {type: CASE, find: {in: [title], pattern: 'OPS-\\d+'}}}\n"
)
_HEAD = "version: 1\nrules:\n  - name: hostile\n"


def _rule(*lines: str) -> str:
    return _HEAD + "".join(f"    {line}\n" for line in lines) + _LINK


def backreference() -> str:
    return _rule("when: [{field: title, matches: '(a+)\\1'}]")


def look_ahead() -> str:
    return _rule("when: [{field: title, matches: '\\b(?!SEV-)[A-Z]+-\\d+'}]")


def look_behind() -> str:
    return _rule("when: [{field: title, matches: '(?<=see )[A-Z]+-\\d+'}]")


def nested_range_template() -> str:
    template = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}OPS-1"
    return (
        _HEAD + "    link:\n      relationship: CAUSES\n      parent: event\n"
        f"      child: {{type: CASE, id: '{template}'}}\n"
    )


def huge_constant_template() -> str:
    return (
        _HEAD + "    link:\n      relationship: CAUSES\n      parent: event\n"
        "      child: {type: CASE, id: \"{{ 'a' * 100000000 }}\"}\n"
    )


def alias_bomb_in_examples() -> str:
    """The billion laughs under `examples`: 9^9 values from a few hundred bytes."""
    anchors = ["        a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    anchors += [f"        a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 9)]
    return (
        _HEAD
        + _LINK
        + "    examples:\n      - source: datadog\n        links: []\n        payload:\n"
        + "\n".join(anchors).replace("        a", "          a")
        + "\n"
    )


def alias_bomb_in_when() -> str:
    """Nested `any:` groups, each nine aliases of the one before."""
    groups = ["&g0 {field: title, equals: x}"]
    groups += [f"&g{n} {{any: [{', '.join([f'*g{n - 1}'] * 9)}]}}" for n in range(1, 9)]
    return _HEAD + "    when:\n" + "".join(f"      - {group}\n" for group in groups) + _LINK


def merge_bomb() -> str:
    """`<<:` merges of merges: every level copies the keys of the one below nine times."""
    levels = ["  m0: &m0 {k0: v, k1: v, k2: v, k3: v, k4: v, k5: v, k6: v, k7: v, k8: v}"]
    levels += [f"  m{n}: &m{n} {{<<: [{', '.join([f'*m{n - 1}'] * 9)}]}}" for n in range(1, 9)]
    return "anchors:\n" + "\n".join(levels) + "\n" + _HEAD + _LINK


def recursive_alias() -> str:
    return _HEAD + _LINK + "    examples:\n      - source: datadog\n        links: []\n        payload: &loop [*loop]\n"


def many_rules(count: int = 33_044) -> str:
    """Rules one after the other: 33,044 of them made a 10 MB file that stalled a reload for 61 s."""
    rule = (
        "  - name: rule-{n}\n    on: {{source: datadog, kind: incident.created}}\n"
        "    when: [{{field: title, contains: 'service {n} is down'}}]\n"
        "    link:\n      relationship: CAUSES\n      parent: event\n"
        "      child: {{type: CASE, find: {{in: [title, message], pattern: '\\b[A-Z][A-Z0-9]{{1,9}}-\\d+\\b'}}}}\n"
        "    description: '{padding}'\n"
    )
    padding = "x" * max(0, 330 - len(rule)) if count > 10_000 else ""
    return "version: 1\nrules:\n" + "".join(rule.format(n=n, padding=padding) for n in range(count))


def big_file() -> str:
    return many_rules(33_044)


def huge_integer_in_when() -> str:
    """A million digits: more than Python turns into an int (a ValueError without a line)."""
    return _rule("when: [{field: title, gt: " + "9" * 1_000_000 + "}]")


def huge_integer_in_examples() -> str:
    return (
        _HEAD
        + _LINK
        + "    examples:\n      - source: datadog\n        links: []\n        payload: {n: "
        + "9" * 1_000_000
        + "}\n"
    )


def huge_integer_key() -> str:
    """The same as a mapping's key (written explicitly: an implicit key holds 1,024 characters at most)."""
    return (
        _HEAD + _LINK + "    examples:\n      - source: datadog\n        links: []\n        payload:\n"
        "          ? " + "1" * 5_000 + "\n          : x\n"
    )


def millions_of_values() -> str:
    """4 MB with no alias: a flow list of 2,100,000 numbers in an example's payload (libyaml took
    13 s to build them, and the values were counted only after)."""
    return (
        _HEAD
        + _LINK
        + "    examples:\n      - source: datadog\n        links: []\n        payload: {n: ["
        + ",".join(["1"] * 2_100_000)
        + "]}\n"
    )


def huge_template() -> str:
    """A 7.7 MB id template of `{{ title }}`s: Jinja took 102 s and 7.5 GB to compile it."""
    return (
        _HEAD
        + "    link: {relationship: CAUSES, parent: event, child: {type: CASE, id: '"
        + "{{ title }}" * 700_000
        + "'}}\n"
    )


def many_templates() -> str:
    """400 rules, each with its own template of 1,000 characters (each under the template cap)."""
    return _rules_with_templates(400, lambda n: f"{n:06}{'{{ title }}' * 90}xxxx")


def many_small_templates() -> str:
    """300 rules, each with its own short template: each compiles in about a millisecond."""
    return _rules_with_templates(300, lambda n: f"OPS-{{{{ payload.n }}}}{n}")


def _rules_with_templates(count: int, template: Callable[[int], str]) -> str:
    rules = "".join(
        f"  - name: r{n}\n"
        f"    link: {{relationship: CAUSES, parent: event, child: {{type: CASE, id: '{template(n)}'}}}}\n"
        for n in range(count)
    )
    return "version: 1\nrules:\n" + rules


def too_many_rules() -> str:
    """10,001 small rules: under the size cap, over the count cap."""
    return many_rules(10_001)


def one_rule_of_many_conditions() -> str:
    """One rule of 20,000 `not_contains` (1.4 MB): against a 3 MB message it held a request for 36 s,
    since evaluation looked at the clock only between rules."""
    conditions = "".join(
        f"      - {{field: message, not_contains: 'zq{n}', ignore_case: true}}\n" for n in range(20_000)
    )
    return _HEAD + "    when:\n" + conditions + _LINK


def deeply_nested_when(levels: int = 260) -> str:
    """2.7 KB of `{all: [{none: [...]}]}` groups 260 deep: building it ran out of Python's stack,
    and `rules check` printed a 2,510-line RecursionError."""
    opened = "".join("{all: [" if level % 2 == 0 else "{none: [" for level in range(levels))
    return _HEAD + "    when: " + opened + "{field: title, contains: x}" + "]}" * levels + "\n" + _LINK


REFUSED = {
    "backreference": backreference,
    "look-ahead": look_ahead,
    "look-behind": look_behind,
    "nested-range-template": nested_range_template,
    "huge-template": huge_template,
    "400-long-templates": many_templates,
    "300-short-templates": many_small_templates,
    "huge-constant-template": huge_constant_template,
    "alias-bomb-in-examples": alias_bomb_in_examples,
    "alias-bomb-in-when": alias_bomb_in_when,
    "merge-bomb": merge_bomb,
    "recursive-alias": recursive_alias,
    "10-MB-33044-rules": big_file,
    "huge-integer-in-when": huge_integer_in_when,
    "huge-integer-in-examples": huge_integer_in_examples,
    "huge-integer-key": huge_integer_key,
    "millions-of-values": millions_of_values,
    "one-rule-of-20000-conditions": one_rule_of_many_conditions,
    "when-nested-260-deep": deeply_nested_when,
}
# Refused too, but only once read: 10,000 rules are allowed (issue 15 measures them), so a file
# one rule over is megabytes of YAML, and takes seconds to count.
REFUSED_ONCE_READ = {"10001-rules": too_many_rules}

# Matches every webhook with a title of many a's: two backtracking-prone patterns that fail and
# a third that holds, a template near its step budget, and a search through every text field.
WORST_ACCEPTED = r"""version: 1
rules:
  - name: worst-accepted
    when:
      any:
        - {field: title, matches: '(a+)+$'}
        - {field: message, matches: '(x+x+)+y'}
        - {field: title, matches: '(.*a){20}'}
    link:
      relationship: RELATES_TO
      parent:
        type: CASE
        id: "{% for i in range(25) %}{% for j in range(30) %}{% endfor %}{% endfor %}OPS-{{ title|length + 1000 }}"
      child:
        type: CASE
        find:
          in: [title, message, severity, status, url, tags.service, payload.incident.message]
          pattern: '(?P<ref>[A-Z][A-Z0-9]{1,9}-\d+)(?:[^A-Z]*(?:[a-z]+|\d+))*'
"""

# A webhook that makes a backtracking engine work hardest on WORST_ACCEPTED's patterns.
HOSTILE_TITLE = "a" * 30 + "!"

# A pattern that overflows RE2's DFA, and a value it is slow on: 0.4 s for 64 KiB of random a's and b's.
SLOW_ON_AB = "[ab]*a[ab]{900}c"
AB_64K = "".join(random.Random(0).choices("ab", k=65_536))
