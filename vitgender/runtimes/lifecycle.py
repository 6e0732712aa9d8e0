"""The runner lifecycle every runtime shares: open (the runtime's `open`), run, close.

Its own module so that wrappers such as `tta` can subclass it without importing `base`, which
opens them.
"""

from __future__ import annotations


class Closing:
    """Mixin: a runner usable as a context manager; runners holding nothing keep the no-op `close`."""

    def close(self) -> None:
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
