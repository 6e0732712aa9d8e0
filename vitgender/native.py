"""Keep native libraries' start-up chatter off the user's stderr.

TensorFlow, LiteRT and MediaPipe write to file descriptor 2 from C++ while they load
("Unable to register cuDNN factory", "Created TensorFlow Lite XNNPACK delegate", absl warnings),
beyond the reach of Python's logging or TF_CPP_MIN_LOG_LEVEL. stderr is for the user's own
errors, so those narrow load steps run with fd 2 pointed at a temporary file; if the step fails,
what the library said is replayed, since then it may explain the failure.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    with _lock, tempfile.TemporaryFile(mode="w+b") as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
