"""``python -m zoo ...`` and the ``zoo`` console script: the process around :func:`zoo.cli.main`.

Ctrl-C exits with 130, one line, nothing written, at every moment once the interpreter has started. Python's
own answer (raise KeyboardInterrupt at the next bytecode, wherever that is) failed now and then, each for
its own reason, so SIGINT gets a handler of its own, set on the first line that runs here (before
``zoo.cli``, argparse, torch, Pyro or the models are imported; ``import zoo`` before it only defines
functions):

- It raises :class:`Interrupted`, a KeyboardInterrupt subclass, not the class itself: CPython (3.11-3.14)
  records a KeyboardInterrupt that leaves an ``exec``/``eval`` of source text as unhandled even when an
  outer ``try`` handles it, and ``python -m`` then kills itself with SIGINT after exiting with 130 (imports
  run such text all the time: dataclasses, namedtuple). CPython compares with the class itself.
- It waits while a module is being imported (sending itself the signal again 20 ms later), at most
  ``IMPORT_WAIT``: raised in the middle of a module's set-up, the exception broke compiled code, and the
  process aborted (torch's c10d set-up: pybind11's ``terminate``), crashed at exit (matplotlib's ft2font)
  or lost the Ctrl-C and went on fitting (pandas' ujson dropped it).
- A Ctrl-C that lands in a finalizer (``__del__``, a weakref callback, a generator closed by the garbage
  collector) is printed and dropped by Python ("Exception ignored in ..."): :func:`_unraisable` sends it
  again instead. One that a library turned into another error is still a Ctrl-C (:func:`zoo.cli.main`).
- Once :func:`zoo.cli.main` has answered, SIGINT is ignored: the interpreter's shutdown (atexit handlers,
  finalizers) cannot turn the answer into a traceback or a death by signal.

The handler is set with ``_signal``, the C module that ``signal`` re-exports and that the interpreter
loaded at start-up: ``import signal`` builds its enums first, milliseconds in which Ctrl-C was a traceback.
Before this module runs, the interpreter's own start-up (``site``) answers Ctrl-C as CPython does.
"""

import _thread
import sys
import time

import _signal as signal   # the interpreter's own (see above): `signal` is `from _signal import *` plus enums

MESSAGE = "zoo: interrupted; nothing was written"
#: the longest a Ctrl-C waits for an import to finish before it is raised anyway (s)
IMPORT_WAIT = 30.0
_waiting_since: float | None = None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C in the ``zoo`` command (see the module docstring for why a subclass)."""


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_globals.get("__name__") in ("importlib._bootstrap", "importlib._bootstrap_external"):
            return True
        frame = frame.f_back
    return False


def _interrupt(signum, frame):
    global _waiting_since
    if _importing(frame):
        _waiting_since = _waiting_since or time.monotonic()
        if time.monotonic() - _waiting_since < IMPORT_WAIT:
            _thread.start_new_thread(_send_again, (0.02,))
            return
    _waiting_since = None
    raise Interrupted


def _send_again(delay: float = 0.0):
    """SIGINT to this process, from another thread (the caller then handles it at its next bytecode)."""
    time.sleep(delay)
    signal.raise_signal(signal.SIGINT)


def _unraisable(unraisable):
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        _thread.start_new_thread(_send_again, ())
    else:
        sys.__unraisablehook__(unraisable)


def _ignore(signum, frame):
    pass


def main(argv: list[str] | None = None) -> int:
    """Run the ``zoo`` command as this process (it sets the process's SIGINT handling, unless the process
    was started with SIGINT ignored, as a shell starts a background job); the exit status."""
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        signal.signal(signal.SIGINT, _interrupt)
        sys.unraisablehook = _unraisable
    try:
        from zoo.cli import main as run

        return run(argv)
    except KeyboardInterrupt:   # while zoo.cli was being imported (run answers it after that)
        print(MESSAGE, file=sys.stderr)
        return 130
    finally:   # a Python no-op, not SIG_IGN: a signal already pending is then consumed quietly
        if signal.getsignal(signal.SIGINT) == _interrupt:
            signal.signal(signal.SIGINT, _ignore)


if __name__ == "__main__":
    sys.exit(main())
