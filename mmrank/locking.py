"""One writer at a time per collection: a file lock (filelock) in the collection's folder.

A writer holds the lock for its whole run (an ``index`` or ``eval`` build), so two runs into one
collection queue instead of interleaving their manifest updates. Readers never wait for it: they
search the revision the manifest publishes, and rebuild a stale index in memory rather than
publish it while a writer is at work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mmrank.errors import CollectionError

LOCK_FILE = ".writer.lock"


class WriterLock:
    """The writer lock of the collection in ``folder``. Re-entrant within a process: a write inside
    a held lock (e.g. one batch of an index run) does not wait for itself."""

    def __init__(self, folder: Path) -> None:
        from filelock import FileLock

        self.folder = folder
        self.path = folder / LOCK_FILE
        self._lock = FileLock(str(self.path), is_singleton=True)

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._lock.is_locked

    @contextmanager
    def hold(self, *, wait: bool = True, on_wait: Callable[[str], None] | None = None) -> Iterator[bool]:
        """Hold the lock for the block; yields whether this call took it (False when it was
        already held here). Another process's lock: with ``wait``, ``on_wait`` is told why, then
        the call waits for it; without, CollectionError at once."""
        from filelock import Timeout

        taken = not self.held
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            if not wait:
                raise CollectionError(
                    f"{self.folder}: another mmrank process is writing to this collection (it holds "
                    f"{self.path}); run again when it is done, or without --no-wait to wait for it."
                ) from None
            if on_wait is not None:
                on_wait(f"{self.folder}: waiting for another mmrank process that is writing to it ...")
            self._lock.acquire()
        except OSError as error:  # e.g. a read-only folder
            raise CollectionError(f"{self.folder}: cannot take its writer lock {self.path} ({error}).") from error
        try:
            yield taken
        finally:
            self._lock.release()

    def try_hold(self) -> bool:
        """Take the lock if nobody holds it (for a reader that would publish a rebuilt index);
        release it with :meth:`release`."""
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=0)
        except (Timeout, OSError):
            return False
        return True

    def release(self) -> None:
        self._lock.release()
