"""What every script's command line shares: the --help format, count arguments, counts, durations, network sizes and
memory in messages, Keras's folder and backend, output to whoever still reads it, Ctrl-C, and signals held back while a
script saves."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import gc
import json
import os
import signal
import sys
from collections.abc import Callable

KERAS_BACKENDS = ("tensorflow", "jax")  # what the networks, fast_layers and the TensorBoard logs run on


def at_least(minimum: int, maximum: int | None = None):
    """An argparse type: an integer no smaller than `minimum` (and no larger than `maximum`, if given)."""

    def parse(text: str) -> int:
        value = int(text)  # a ValueError is argparse's "invalid int value" error
        if maximum is not None and not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be between {minimum} and {maximum}, got {value}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def positive(text: str) -> float:
    """An argparse type: a finite number above 0."""
    value = float(text)  # a ValueError is argparse's "invalid float value" error
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


positive.__name__ = "float"

SEED = at_least(0, 2**32 - 1)  # what numpy's and Keras's seeding take


def keras_home() -> str:
    """Keras's folder, found as Keras finds it: KERAS_HOME, else ~/.keras, else /tmp/.keras where home cannot be written."""
    home = os.path.expanduser("~")
    return os.environ.get("KERAS_HOME") or os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")


def keras_backend() -> tuple[str, str]:
    """The backend Keras will load and what says so, found as Keras finds it without loading it.

    KERAS_BACKEND, else keras.json's "backend" in keras_home(), else tensorflow.
    """
    if backend := os.environ.get("KERAS_BACKEND"):
        return backend, "KERAS_BACKEND"
    config = os.path.join(keras_home(), "keras.json")
    try:
        with open(config) as f:
            backend = json.load(f).get("backend")
    except (OSError, ValueError, AttributeError):
        backend = None
    return (backend, config) if isinstance(backend, str) and backend else ("tensorflow", "Keras's default")


def unsupported_backend() -> str | None:
    """Why the networks cannot train on the backend Keras would load (torch, numpy...), or None."""
    backend, source = keras_backend()
    if backend in KERAS_BACKENDS:
        return None
    return (f"Keras is set to its {backend} backend ({source}); these networks train on {' or '.join(KERAS_BACKENDS)}: "
            "run with KERAS_BACKEND=tensorflow")


def plural(count: int, noun: str) -> str:
    """`count` and `noun`, the noun with an s unless the count is one: "1 trial", "3 trials"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def parameters(count: int) -> str:
    """A network's parameter count as a person reads it: "7.06 M", "213 k"."""
    return f"{count / 1e6:.2f} M" if count >= 1e6 else f"{count / 1e3:.0f} k"


def memory(count: float) -> str:
    """A number of bytes as a person reads it: "1.22 GiB", "75.3 MiB"."""
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def duration(seconds: float) -> str:
    """A span of time as a person reads it: "45 s", "12 min", "3.2 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help as the scripts write it: the description's own line breaks, and each option's default once."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # None, a flag's False and --help's SUPPRESS say nothing; a help that explains its default has it.
        if action.default in (None, argparse.SUPPRESS) or action.default is False or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """A script's parser: --help in HelpFormatter's form, and a bad argument said in one line."""

    def __init__(self, description: str | None = None):
        super().__init__(description=description, formatter_class=HelpFormatter)

    def error(self, message: str):
        # argparse's own puts the whole usage first, a dozen lines above the one that says what is wrong.
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


class ReaderMayLeave:
    """A standard stream whose reader may go (`| head`, a `tee` that died): what follows is dropped, the work goes on.

    Python would raise BrokenPipeError from the next print, wherever it is: in the middle of an analysis
    that had yet to write its files, or between a search's trials.
    """

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_left()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_left()

    def _reader_left(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)
        self._stream.flush()  # what was held back for the pipe, into /dev/null

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def run(main: Callable[[], int]) -> None:
    """Exit with main()'s status, its output written line by line to whoever still reads it; a Ctrl-C that main does not
    handle ends in one line and 130."""
    # A crash in native code (a kernel's segfault, an abort) would end a days-long search with no word of where it
    # was: Python's fault handler prints every thread's stack to stderr first, where stderr is a file.
    with contextlib.suppress(ValueError, RuntimeError):
        faulthandler.enable()
    # Where stdout is a file or a pipe (nohup ... > search.log), Python would hold 8 KB of it back: a log
    # followed with `tail -f` would lag by trials, and a kill -9 or a crash would take the last lines with it.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    sys.stdout, sys.stderr = ReaderMayLeave(sys.stdout), ReaderMayLeave(sys.stderr)
    try:
        status = main()
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        status = 130
    # A training that a signal stopped mid-epoch leaves Keras's tf.data iterator (a GeneratorDataset over the batches)
    # in reference cycles. Left to the interpreter's teardown, TensorFlow would finalize it by calling back into a
    # Python that is going away ("Error occurred when finalizing GeneratorDataset iterator ... The process may be
    # terminated"): freed now, while Python still runs.
    gc.collect()
    sys.exit(status)


class SignalGuard:
    """Turn SIGINT/SIGTERM into KeyboardInterrupt, but never in the middle of saving."""

    def __init__(self):
        self.signum = None
        self._saving = False
        self._pending = False
        self._stopping = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        self._previous_unraisable_hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable

    def _unraisable(self, unraisable) -> None:
        # A signal that comes while Python runs code that cannot raise (JAX's garbage-collection callback, which
        # Keras imports even on TensorFlow; a __del__) would print "Exception ignored in ..." and a traceback into
        # the log: the run acts on it at its next check instead (stop_if_signalled).
        if issubclass(unraisable.exc_type, KeyboardInterrupt) and self.signum is not None:
            return
        self._previous_unraisable_hook(unraisable)

    def _handle(self, signum, frame):
        if self._stopping:
            return  # a second Ctrl-C, impatient: the stop it asks for is underway
        self.signum = signum
        if self._saving:
            self._pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def saving(self):
        """Hold signals back while the block runs; act on them after."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False
        if self._pending:
            raise KeyboardInterrupt

    def stopping(self) -> None:
        """Ignore further signals: the run is stopping already, and what it says of its results must not be cut short."""
        self._stopping = True

    def stop_if_signalled(self) -> None:
        """KeyboardInterrupt if a signal came, whatever became of the one raised then (a library may swallow it)."""
        if self.signum is not None:
            raise KeyboardInterrupt

    def restore(self) -> None:
        """Put the previous signal handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = self._previous_unraisable_hook
