"""The rules in force in a running service, reloaded when rules.yaml changes (`LiveRules`).

A new file is loaded beside the rules in force; if it has problems, the rules in force stay.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path

from caselink.errors import RulesError
from caselink.rules.evaluation import RuleSet
from caselink.rules.loading import load_rules

LOAD_WAIT = 0.05  # seconds the caller that notices a new rules file waits for its background load


class LiveRules:
    """The rules in force, reloaded when the file changes; a bad file never replaces good rules.

    A new file is loaded beside the rules in force: while one thread loads it
    (with `background`, a thread of its own) every other caller goes on with the
    rules in force and never waits. `file_in_force()` says whether the file on
    disk is the one those rules came from.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sources: Sequence[str] | None = None,
        check_every: float = 2.0,
        on_reload: Callable[[RuleSet | None, RulesError | None], None] | None = None,
        on_check: Callable[[bool], None] | None = None,
        background: bool = False,
    ) -> None:
        self.path = Path(path)
        self.sources = sources
        self.check_every = check_every
        self.on_reload = on_reload
        self.on_check = on_check
        self.background = background
        self.ruleset: RuleSet | None = None
        self.error: RulesError | None = None
        # When this process loaded the rules in force (Unix seconds).
        self.loaded_at: float | None = None
        self._stamp: tuple[int, int, int] | None = None  # of the file last read, loaded or not
        self._in_force_stamp: tuple[int, int, int] | None = None  # of the file the rules in force came from
        self._checked_at = 0.0
        self._loading = threading.Lock()
        with self._loading:
            self._load(self._file_stamp(), report=False)

    def current(self) -> RuleSet | None:
        now = time.monotonic()
        if now - self._checked_at >= self.check_every:
            self._checked_at = now
            stamp = self._file_stamp()
            if self.on_check:
                self.on_check(self.ruleset is not None and stamp == self._in_force_stamp)
            if stamp != self._stamp and self._loading.acquire(blocking=False):
                # Whoever finds the lock taken goes on with the rules in force.
                if self.background:
                    loader = threading.Thread(target=self._load_then_release, args=(stamp,), daemon=True)
                    loader.start()
                    # A usual file loads in milliseconds: the caller that noticed it gets it at once.
                    # A slow one costs that caller this much at most, and nobody else anything.
                    loader.join(LOAD_WAIT)
                else:
                    self._load_then_release(stamp)
        return self.ruleset

    def watch(self) -> threading.Thread:
        """Check the file every `check_every` seconds from a daemon thread of its own.

        Requests check it too, but a process that gets none (all of a load balancer's
        connections on another worker) would otherwise report, through its readiness and
        the `caselink_rules_file_in_force` gauge, a file it last saw long ago.
        """

        def check_forever() -> None:
            while True:
                time.sleep(self.check_every)
                self.current()

        watcher = threading.Thread(target=check_forever, name="caselink-rules-watch", daemon=True)
        watcher.start()
        return watcher

    @property
    def loading(self) -> bool:
        """True while a new file is being read."""
        return self._loading.locked()

    def file_in_force(self) -> bool:
        """Whether the file on disk now is the one the rules in force were loaded from."""
        return self.ruleset is not None and self._file_stamp() == self._in_force_stamp

    def _file_stamp(self) -> tuple[int, int, int] | None:
        # The inode changes when an editor or a deploy replaces the file; the
        # size and nanosecond mtime catch an edit in place.
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _load_then_release(self, stamp: tuple[int, int, int] | None) -> None:
        try:
            self._load(stamp, report=True)
        finally:
            self._loading.release()

    def _load(self, stamp: tuple[int, int, int] | None, *, report: bool) -> None:
        # The stamp is taken before reading: a change while reading is seen at the next check.
        self._stamp = stamp
        self._checked_at = time.monotonic()
        ruleset: RuleSet | None = None
        error: RulesError | None = None
        try:
            ruleset = load_rules(self.path, sources=self.sources)
        except RulesError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - out of memory, too deep: say so and try again at the next check
            error = RulesError([f"{self.path}: loading the rules failed: {type(exc).__name__}: {exc}"])
            self._stamp = None
        if ruleset is not None:
            self.ruleset, self.error, self._in_force_stamp = ruleset, None, stamp
            self.loaded_at = time.time()
        else:
            self.error = error
        if report and self.on_reload:
            self.on_reload(ruleset, error)
        if self.on_check:
            self.on_check(self.ruleset is not None and stamp == self._in_force_stamp)
        del ruleset, error
        _release_memory()


def _release_memory() -> None:
    """Hand what a replaced (or refused) rule set held back to the system, not only to Python's allocator."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the memory stays with the process for its next use
