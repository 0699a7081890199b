"""Jinja for rules' `id:` templates, sandboxed and bounded.

Jinja's sandbox keeps a template away from Python's internals but not from
the CPU or the memory: `{% for i in range(100000) %}{% for j in range(100000) %}`
runs for hours and `{{ 'a' * 100000000 }}` builds 100 MB (and Jinja's
optimiser built it while the rules were loading). Here every rendering has a
budget of steps, each loop iteration, call, filter and operation spends from
it in proportion to the size of what it handles, no value a template handles
or builds may exceed MAX_VALUE characters, the output may not exceed
MAX_OUTPUT, and a clock stops what the steps did not. `unbounded_constants`
finds at load what would exceed these on every event.
"""

from __future__ import annotations

import functools
import operator
import re
import threading
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

MAX_STEPS = 1000
MAX_VALUE = 4096  # characters (or items, counted deeply) of any value a template handles or builds
MAX_OUTPUT = 1024  # characters an id template may render; an id is never that long
MAX_SECONDS = 0.01
# Characters of one template's source; distinct templates in a rules file, and their characters
# together. Jinja compiles one in ~0.8 ms plus ~10 ms a KB (a 7.7 MB template of `{{ title }}`s
# took 102 s and 7.5 GB to refuse): together under a second of compiling.
MAX_SOURCE = 1024
MAX_TEMPLATES_PER_FILE = 200
MAX_SOURCES_PER_FILE = 16 * 1024
# A step is one iteration, call or operation; handling text costs one more step per this many characters.
_CHARACTERS_PER_STEP = 64
_LOOP_FILTER = "caselink_step"
_VALUE_FILTER = "caselink_value"


class TemplateLimitError(SecurityError):
    """A rendering went over one of the bounds."""


class _Budget(threading.local):
    steps: int | None = None
    deadline: float = 0.0


_budget = _Budget()


def _spend(steps: int) -> None:
    left = _budget.steps
    if left is None:
        # Outside a rendering: Jinja's optimiser evaluating constants while compiling.
        raise TemplateLimitError("evaluated only while rendering")
    left -= steps
    if left < 0:
        raise TemplateLimitError(f"the template took more than {MAX_STEPS} steps")
    if time.monotonic() > _budget.deadline:
        raise TemplateLimitError(f"the template ran for more than {MAX_SECONDS * 1000:.0f} ms")
    _budget.steps = left


def weight(value: Any, limit: int = MAX_VALUE) -> int:
    """Characters and items in `value`, counted into containers; stops counting past `limit`."""
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, int):
        return 1 + value.bit_length() // 8
    if isinstance(value, Mapping):
        items: Iterable[Any] = (part for pair in value.items() for part in pair)
        total = len(value)
    elif isinstance(value, (list, tuple, set, frozenset)):
        items, total = value, len(value)
    else:
        return 1
    for item in items:
        if total > limit:
            break
        total += weight(item, limit - total)
    return total


def _checked(value: Any, what: str) -> Any:
    size = weight(value)
    if size > MAX_VALUE:
        raise TemplateLimitError(f"{what} is over {MAX_VALUE} characters; a template handles no more")
    _spend(1 + size // _CHARACTERS_PER_STEP)
    return value


def _checked_arguments(args: Iterable[Any], kwargs: Mapping[str, Any], what: str) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_VALUE:
            raise TemplateLimitError(f"{what} was given {value}; a template uses numbers up to {MAX_VALUE}")
        _checked(value, f"a value given to {what}")


def _growth(name: str, text: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int | None:
    """The most characters `name` can build from `text` and its arguments, for the functions
    whose result may be many times the size of what they are given (None for the others).

    Counted before the call: the result must be bounded before it is built, not after
    (`('a' * 4000).replace('', 'x' * 4000)` builds 16 million characters in ~40 ms).
    """
    if not isinstance(text, str):
        return None
    if name == "replace":
        old = args[0] if args else kwargs.get("old", "")
        new = args[1] if len(args) > 1 else kwargs.get("new", "")
        if not isinstance(old, str) or not isinstance(new, str):
            return None
        occurrences = text.count(old) if old else len(text) + 1
        count = args[2] if len(args) > 2 else kwargs.get("count", -1)
        if isinstance(count, int) and count >= 0:
            occurrences = min(occurrences, count)
        return len(text) + occurrences * max(len(new) - len(old), 0)
    if name == "join":
        items = args[0] if args else kwargs.get("iterable", ())
        if not isinstance(items, (list, tuple, str)):
            return None
        return sum(weight(item) for item in items) + len(text) * max(len(items) - 1, 0)
    if name == "indent":
        width = args[0] if args else kwargs.get("width", 4)
        pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        return len(text) + (text.count("\n") + 1) * pad
    if name == "format":
        # Every field may print every argument, each as wide as it is.
        return len(text) + (text.count("{") + text.count("%")) * sum(
            weight(value) for value in (*args, *kwargs.values())
        )
    if name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        return len(text) + text.count("\t") * (size if isinstance(size, int) else 8)
    return None


def _check_growth(name: str, text: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], what: str) -> None:
    size = _growth(name, text, args, kwargs)
    if size is not None and size > MAX_VALUE:
        raise TemplateLimitError(f"{what} could build {size:,} characters, over {MAX_VALUE}; a template builds no more")


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)  # keeps jinja_pass_arg, so Jinja passes the context as before
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _checked_arguments(args, kwargs, f"filter {name!r}")
        values = [arg for arg in args if not isinstance(arg, (jinja2.runtime.Context, jinja2.nodes.EvalContext))]
        if values:
            if name == "join":
                # {{ items | join(sep) }}: the text repeated is the separator.
                separator = values[1] if len(values) > 1 else kwargs.get("d", "")
                _check_growth("join", separator, (values[0],), {}, f"filter {name!r}")
            else:
                _check_growth(name, values[0], tuple(values[1:]), kwargs, f"filter {name!r}")
        if name == "format" and args and isinstance(args[0], str) and _WIDE_FORMAT.search(args[0]):
            raise TemplateLimitError("format with a width of 100 or more, or *, is not allowed in a template")
        return _bounded_result(function(*args, **kwargs), f"filter {name!r}")

    return bounded


def _bounded_result(result: Any, what: str) -> Any:
    if isinstance(result, Iterator):
        return _steps(result)
    return _checked(result, f"what {what} returned")


def _steps(iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        _spend(1)
        yield item


def _range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_VALUE:
        raise TemplateLimitError(f"range of {len(numbers)} numbers; a template uses up to {MAX_VALUE}")
    return numbers


class _Bounds(NodeTransformer):
    """Every loop spends a step per iteration; every `~` is checked like any other value built."""

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802 - Jinja calls visit_<NodeName>
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, _LOOP_FILTER, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        return nodes.Filter(node, _VALUE_FILTER, [], [], None, None, lineno=node.lineno)


class TemplateEnvironment(ImmutableSandboxedEnvironment):
    """Jinja for `id:` templates.

    Sandboxed, and immutable because a template must not change the event it
    reads (the event is stored after evaluation). A mapping's key wins over a
    dict method of the same name, so `payload.items` is the payload's "items".
    """

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            optimized=False,
            finalize=lambda value: _checked(value, "a value the template prints"),
        )
        self.filters = {name: _bounded_filter(name, function) for name, function in self.filters.items()}
        self.filters[_LOOP_FILTER] = _steps
        self.filters[_VALUE_FILTER] = lambda value: _checked(value, "text joined with ~")
        self.globals.pop("lipsum", None)
        self.globals["range"] = _range

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree: nodes.Template = _Bounds().visit(super()._parse(source, name, filename))
        return tree

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - Jinja's own signature
        what = getattr(__obj, "__name__", "a function")
        _checked_arguments(args, kwargs, f"{what}()")
        # A method carries its text: 'x'.replace('', y) makes len(text) copies of y.
        bound = getattr(__obj, "__self__", None)
        if isinstance(bound, (str, bytes)):
            _checked(bound, f"the text {what}() is called on")
            _check_growth(what, bound, args, kwargs, f"{what}()")
        return _bounded_result(super().call(__context, __obj, *args, **kwargs), f"{what}()")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None and _WIDE_BRACES.search(value.__self__):
            # '{:>9999999}'.format(x): widths are where formatting grows.
            raise TemplateLimitError("format() with a width of 100 or more is not allowed in a template")
        return wrapped

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        for side in (left, right):
            if isinstance(side, int) and not isinstance(side, bool) and abs(side) > MAX_VALUE:
                if operator_ in ("*", "**") or isinstance(left, str):
                    raise TemplateLimitError(f"{operator_} with {side}; a template uses numbers up to {MAX_VALUE}")
            _checked(side, f"a value given to {operator_}")
        if operator_ == "*" and (isinstance(left, int) or isinstance(right, int)):
            count = left if isinstance(left, int) else right
            repeated = right if count is left else left
            if not isinstance(repeated, (int, float)) and weight(repeated) * abs(count) > MAX_VALUE:
                raise TemplateLimitError(f"* would build more than {MAX_VALUE} characters")
        if operator_ == "**" and isinstance(left, int) and isinstance(right, int):
            if abs(left).bit_length() * abs(right) > MAX_VALUE * 8:
                raise TemplateLimitError(f"** would build a number over {MAX_VALUE} bytes")
        if operator_ == "%" and isinstance(left, str) and _WIDE_FORMAT.search(left):
            # '%9999999s' % x: widths are where formatting grows.
            raise TemplateLimitError("% formatting with a width of 100 or more, or *, is not allowed in a template")
        return _checked(_BINOPS[operator_](left, right), f"what {operator_} built")


_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "*": operator.mul,
    "**": operator.pow,
    "%": operator.mod,
}
_WIDE_BRACES = re.compile(r"\{[^{}]*:[^{}]*(?:\d{3,}|\{)")
_WIDE_FORMAT = re.compile(r"%[-#0 +]*(?:\*|\d{3,}|\d*\.(?:\*|\d{3,}))")


def render(template: jinja2.Template, names: Mapping[str, Any], *, clock: bool = True) -> str:
    """Render within the bounds; TemplateLimitError (or what the template raised) when it cannot.

    `clock=False` leaves out the MAX_SECONDS clock, the one bound that depends on how busy the
    machine is: a check at load must not refuse a file because the CPU was shared.
    """
    _budget.steps = MAX_STEPS
    _budget.deadline = time.monotonic() + MAX_SECONDS if clock else float("inf")
    pieces: list[str] = []
    size = 0
    try:
        for piece in template.generate(names):
            size += len(piece)
            if size > MAX_OUTPUT:
                raise TemplateLimitError(f"the template rendered more than {MAX_OUTPUT} characters")
            pieces.append(piece)
    finally:
        _budget.steps = None
    return "".join(pieces)


def unbounded_constants(tree: nodes.Template) -> list[str]:
    """What in a parsed template goes over the bounds whatever the event: big numbers, nested ranges."""
    problems = [
        f"it uses the number {value} to build or repeat; a template uses numbers up to {MAX_VALUE}"
        for value in dict.fromkeys(_building_constants(tree))
        if abs(value) > MAX_VALUE
    ]
    problems.extend(
        f"its loops run {runs} times, more than the {MAX_STEPS} steps a template may take"
        for runs in _constant_loop_runs(tree)
        if runs > MAX_STEPS
    )
    return problems


def _building_constants(tree: nodes.Template) -> Iterator[int]:
    """Numbers that say how much to build: operands of * and **, arguments of calls and filters.

    A number compared with (`count > 100000`) or added to builds nothing.
    """
    operands: list[nodes.Node] = []
    for node in tree.find_all((nodes.Mul, nodes.Pow, nodes.Call, nodes.Filter)):
        if isinstance(node, (nodes.Mul, nodes.Pow)):
            operands += [node.left, node.right]
        elif isinstance(node, (nodes.Call, nodes.Filter)):
            operands += [*node.args, *(keyword.value for keyword in node.kwargs)]
    for operand in operands:
        if isinstance(operand, nodes.Const) and isinstance(operand.value, int) and not isinstance(operand.value, bool):
            yield operand.value


def _constant_loop_runs(node: nodes.Node, outer: int = 1) -> Iterator[int]:
    """For each innermost loop over range(constants), how many times it runs with its enclosing ones."""
    for child in node.iter_child_nodes():
        runs = outer
        if isinstance(child, nodes.For):
            runs = outer * (_constant_range_length(child.iter) or 1)
            yield runs
        yield from _constant_loop_runs(child, runs)


def _constant_range_length(node: nodes.Node) -> int | None:
    if isinstance(node, nodes.Filter) and node.name == _LOOP_FILTER and node.node is not None:
        node = node.node
    if not (isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name) and node.node.name == "range"):
        return None
    bounds = [arg.value for arg in node.args if isinstance(arg, nodes.Const) and isinstance(arg.value, int)]
    if not node.args or len(bounds) != len(node.args):
        return None
    try:
        return len(range(*bounds))
    except (TypeError, ValueError, OverflowError):
        return None
