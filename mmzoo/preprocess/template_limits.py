"""Render a tokenizer's ``chat_template`` within limits of time and size.

A chat_template comes with a downloaded tokenizer, so it is untrusted code. Jinja's sandbox already
stops it from reaching Python internals and caps ``range()`` at 100,000 items, but not from looping
(``range`` inside ``range``), recursing through macros, or allocating without end
(``'x' * 10**10``, ``"x".ljust(10**10)``, ``{% set s = s ~ s %}`` forty times). Here every value a
template builds is measured where it is built (``*``, ``+``, ``**``, ``~``, calls, filters, namespace
attributes), the output is counted as it streams, and each render has a deadline. A template that
crosses a limit stops the run with one line (it would fail every sample alike): a limit on a render,
not a rejection of the sample.

The deadline holds in every thread. The instrumented points (every call, operator, filter, ``~``, loop
iteration and output piece) compare the clock with the render's deadline, so a render in any thread (a
caller's thread pool, a notebook, a server) stops on time: a template can only take long by looping or
recursing, and each loop iteration and each macro call passes a check. In a process's main thread (the CLI,
every ``--workers`` process) a SIGALRM timer backs this up as well.
"""
from __future__ import annotations

import functools
import re
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import MmzooError

MAX_CHARS = 32 << 20  # any string/list a template builds, and its whole output
MAX_POW_BITS = 1 << 16  # integers a template may compute with '**'
RENDER_SECONDS = 2.0  # one render of one conversation (real templates take well under a millisecond)


class TemplateLimitError(MmzooError):
    """A chat_template exceeded a render limit."""

    def __init__(self, what: str):
        super().__init__(f"the tokenizer's chat_template {what}", hint="pick a named --template, e.g. vicuna_v1")


def _too_big(value: Any) -> bool:
    return isinstance(value, (str, list, tuple, dict)) and len(value) > MAX_CHARS


_render = threading.local()  # .deadline: time.monotonic() value the current thread's render must end by


def check_deadline() -> None:
    deadline = getattr(_render, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise TemplateLimitError(f"took more than {RENDER_SECONDS:g} s to render one conversation")


def deadline_iter(iterable: Any) -> Iterator[Any]:
    """A template's ``for`` loop goes through this: each iteration checks the deadline (an empty loop body
    calls nothing else that would)."""
    for item in iterable:
        check_deadline()
        yield item


def checked(value: Any) -> Any:
    check_deadline()
    if _too_big(value):
        raise TemplateLimitError(f"built a value of {len(value):,} items (limit {MAX_CHARS:,})")
    return value


def _check_arguments(args: tuple, kwargs: dict) -> None:
    """``"x".ljust(n)``, ``center(n)``, ``indent(n)``...: a count argument is the size of the result."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_CHARS:
            raise TemplateLimitError(f"passed {value:,} to a function (limit {MAX_CHARS:,})")


# A width or precision in a format string is the size of the result: '%0999999999d' % 1 is 1 GB.
_PRINTF_WIDTH = re.compile(r"%[-#0 +]*(\d+)?(?:\.(\d+))?")
_FORMAT_WIDTH = re.compile(r"\{[^{}]*?:[^{}]*?(\d+)[^{}]*\}")


def _check_format(fmt: Any) -> None:
    if not isinstance(fmt, str) or ("%" not in fmt and "{" not in fmt):
        return
    for match in (*_PRINTF_WIDTH.finditer(fmt), *_FORMAT_WIDTH.finditer(fmt)):
        if any(g and int(g) > MAX_CHARS for g in match.groups()):
            raise TemplateLimitError(f"formats with a width over {MAX_CHARS:,}")


def _bounded_filter(function: Any) -> Any:
    @functools.wraps(function)  # keeps jinja's pass_context/pass_environment marks
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _check_arguments(args, kwargs)
        if function.__name__ == "do_format" and args:  # "%09d"|format(x)
            _check_format(args[0])
        return checked(function(*args, **kwargs))

    return wrapper


def bounded_environment() -> Any:
    """An ImmutableSandboxedEnvironment as transformers uses, with every value measured."""
    import jinja2.ext
    from jinja2 import nodes
    from jinja2.compiler import CodeGenerator
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import Namespace

    class BoundedCodeGenerator(CodeGenerator):
        def visit_Concat(self, node: Any, frame: Any) -> None:  # the `~` operator
            self.write("environment.checked(")
            super().visit_Concat(node, frame)
            self.write(")")

        def visit_For(self, node: Any, frame: Any) -> None:  # `for x in xs` iterates `deadline_iter(xs)`
            if not getattr(node, "_mmzoo_deadline", False):
                node.iter = nodes.Call(nodes.EnvironmentAttribute("deadline_iter"), [node.iter], [], None, None, lineno=node.lineno)
                node._mmzoo_deadline = True
            super().visit_For(node, frame)

    class BoundedNamespace(Namespace):
        def __setitem__(self, name: str, value: Any) -> None:
            super().__setitem__(name, checked(value))

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        code_generator_class = BoundedCodeGenerator
        intercepted_binops = frozenset({"+", "*", "**", "%"})

        @staticmethod
        def checked(value: Any) -> Any:
            return checked(value)

        deadline_iter = staticmethod(deadline_iter)

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            ints = isinstance(left, int) and isinstance(right, int)
            if operator == "**" and ints and right > 0 and max(abs(left).bit_length(), 1) * right > MAX_POW_BITS:
                raise TemplateLimitError(f"computed {left} ** {right} (limit {MAX_POW_BITS:,} bits)")
            if operator == "%" and isinstance(left, str):  # formatting, not the modulo of numbers
                _check_format(left)
                _check_arguments(right if isinstance(right, tuple) else (right,), {})  # '%*d' takes its width from here
            if operator == "*" and not ints:
                count, other = (right, left) if isinstance(right, int) else (left, right)
                if isinstance(count, int) and hasattr(other, "__len__") and len(other) * count > MAX_CHARS:
                    raise TemplateLimitError(f"repeated a value {count:,} times (limit {MAX_CHARS:,} items)")
            return checked(super().call_binop(context, operator, left, right))

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - jinja's signature
            _check_arguments(args, kwargs)
            if getattr(__obj, "__name__", "") in ("format", "format_map"):  # "{:09}".format(x)
                _check_format(getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None))  # the sandbox wraps it
            return checked(super().call(__context, __obj, *args, **kwargs))

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters = {name: _bounded_filter(f) for name, f in env.filters.items()}
    env.globals["namespace"] = BoundedNamespace
    return env


_alarm = {"armed": False, "previous": None}


def _on_alarm(signum: int, frame: Any) -> None:
    if _alarm["armed"]:
        raise TemplateLimitError(f"took more than {RENDER_SECONDS:g} s to render one conversation")
    previous = _alarm["previous"]
    if callable(previous):  # someone else's alarm: theirs to handle
        previous(signum, frame)
    elif previous == signal.SIG_DFL:  # what an alarm nobody handles does: end the process
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGALRM)


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Set this thread's render deadline (checked at every instrumented point) and, in the main thread, arm a
    one-shot SIGALRM timer as well. The handler is installed once per process (swapping it on every render
    would double the cost of a typical render); it chains to any earlier handler."""
    _render.deadline = time.monotonic() + seconds
    try:
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
            yield
        else:
            with _alarm_timer(seconds):
                yield
    finally:
        _render.deadline = None


@contextmanager
def _alarm_timer(seconds: float) -> Iterator[None]:
    if signal.getsignal(signal.SIGALRM) is not _on_alarm:
        _alarm["previous"] = signal.signal(signal.SIGALRM, _on_alarm)
    _alarm["armed"] = True
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _alarm["armed"] = False


def render_bounded(template: Any, **variables: Any) -> str:
    """``template.render(**variables)``, streamed and counted, under the deadline."""
    pieces: list[str] = []
    size = 0
    try:
        with _deadline(RENDER_SECONDS):
            for piece in template.generate(**variables):
                check_deadline()
                size += len(piece)
                if size > MAX_CHARS:
                    raise TemplateLimitError(f"rendered more than {MAX_CHARS:,} characters")
                pieces.append(piece)
    except RecursionError:
        raise TemplateLimitError("recursed too deeply") from None
    except MemoryError:
        raise TemplateLimitError("ran out of memory") from None
    return "".join(pieces)
