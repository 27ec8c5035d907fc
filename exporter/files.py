"""Files written atomically: a temporary file beside the target, flushed to disk, renamed over it.

An interrupted or failed write leaves either the old file or none, never half
of one.  Shared by the calibrate command and the profiler's outputs.
"""

import os
import tempfile
from typing import Any, Callable


def atomic_write(path: str, fill: Callable[[Any], None], binary: bool = False) -> str:
    """Call ``fill(handle)`` on a temporary file in ``path``'s directory, then rename it to ``path``.

    Raises OSError (the temporary file removed) when the directory is not writable or a write fails.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": "", "encoding": "utf-8"})) as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
