"""What a command does with an error that reaches its top: a line or two, never a traceback.

The ``swim`` commands, ``python -m simulator`` and the examples run their body through
:func:`run_command`.  An error the user can act on (one of the ``expected`` types, or an
``OSError``: a file, a socket, a name) prints as ``program: message``; Ctrl-C prints
``program: interrupted``.  Anything else is a bug: one line says what was raised and another
where its traceback was saved, so that it can be reported.  Errors that come out of trio
nurseries inside ``ExceptionGroup``s are unwrapped to their causes first.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import TextIO

log = logging.getLogger("swim.toplevel")

EXIT_ERROR = 1
"""The exit status of an error the user can act on."""
EXIT_BUG = 70
"""The exit status of an unexpected exception (``EX_SOFTWARE`` in BSD's sysexits.h)."""
EXIT_INTERRUPTED = 130
"""The exit status after Ctrl-C (128 + SIGINT), as shells report it."""


def causes(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc``, nested exception groups flattened; ``[exc]`` when it is
    not a group."""
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    return [leaf for inner in exc.exceptions for leaf in causes(inner)]


def describe(exc: BaseException) -> str:
    """An error as one line: an ``OSError``'s reason and file without its ``[Errno n]``; a
    group's errors, each so, one after another (rather than "2 sub-exceptions")."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(cause) for cause in causes(exc))
    if isinstance(exc, OSError) and exc.strerror and not str(exc).startswith(exc.strerror):
        text = exc.strerror
        if exc.filename is not None:
            text += f": {exc.filename}"
        return text
    return str(exc) or type(exc).__name__


def run_command(
    program: str,
    body: Callable[[], int],
    *,
    expected: tuple[type[Exception], ...] = (),
    stderr: TextIO | None = None,
) -> int:
    """Run ``body`` and return its exit status; an exception it raises becomes a message on
    ``stderr`` (standard error by default) and :data:`EXIT_ERROR`, :data:`EXIT_INTERRUPTED` or
    :data:`EXIT_BUG`.  ``SystemExit`` (argparse's usage errors, ``--help``) passes through."""
    out = stderr or sys.stderr
    try:
        return body()
    except SystemExit:
        raise
    except BaseException as exc:  # KeyboardInterrupt, and groups holding it, included
        found = causes(exc)
        if any(isinstance(cause, KeyboardInterrupt) for cause in found):
            print(f"{program}: interrupted", file=out)
            return EXIT_INTERRUPTED
        known = (*expected, OSError)
        if all(isinstance(cause, known) for cause in found):
            for cause in found[:2]:
                print(f"{program}: {describe(cause)}", file=out)
            return EXIT_ERROR
        bug = next(cause for cause in found if not isinstance(cause, known))
        print(f"{program}: unexpected {type(bug).__name__}: {describe(bug)}", file=out)
        _report_bug(program, exc, out)
        return EXIT_BUG


def _report_bug(program: str, exc: BaseException, out: TextIO) -> None:
    """Save the traceback of ``exc`` in a temporary file and say where (printing it only when
    it cannot be saved: a bug must not go unseen)."""
    log.debug("unexpected error", exc_info=exc)
    try:
        with tempfile.NamedTemporaryFile(
            "w", prefix="shoal-bug-", suffix=".txt", delete=False
        ) as file:
            traceback.print_exception(exc, file=file)
    except OSError as error:
        print(f"{program}: this is a bug; please report it with this traceback:", file=out)
        traceback.print_exception(exc, file=out)
        print(f"{program}: (the traceback could not be saved: {describe(error)})", file=out)
        return
    print(f"{program}: this is a bug; please report it with the traceback in {file.name}", file=out)
