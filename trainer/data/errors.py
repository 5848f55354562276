"""The data errors of the trainer: one exception class for bad, inconsistent or damaged input data.

Every message is one line naming what was expected and what came (the shard, the video, the list line);
``trainer.cli`` turns a ``DataError`` into that line and exit status 1.
"""

from __future__ import annotations

import re

# torch.utils.data re-raises a worker's exception as ``type(e)(text)``, the text being "Caught DataError in
# DataLoader worker process N.\nOriginal Traceback ...", ending with the original "...DataError: <message>".
_WORKER = re.compile(r"Caught \w+ in (DataLoader worker process \d+)\.\nOriginal Traceback .*\n[\w.]*DataError: (.*)\n?",
                     re.DOTALL)


# What to do about damaged data: the folder's own check names what to re-extract.
DAMAGED = "`flowprep verify` on the folder says what to re-extract"


def unreadable(path: object) -> "DataError":
    """A shard this user may not read is not damaged (re-extracting it would change nothing, and a rerun fails the
    same way): ``cannot read FILE: permission denied (fix its permissions)``, as flowprep's commands say it."""
    return DataError(f"cannot read {path}: permission denied (fix its permissions)")


def one_line(e: BaseException) -> str:
    """An exception as "Type: text" on one line, for a DataError that names what could not be read."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


class DataError(ValueError):
    """Bad or inconsistent input data; the message is one line naming what was expected and what came.

    Raised in a DataLoader worker, it reaches the main process as a new DataError built from the worker's
    whole traceback (torch's ``ExceptionWrapper.reraise``); that one keeps only the original line and says
    which worker read it, so the user sees the shard and the video, not 1.4 KB of someone else's stack.
    """

    def __init__(self, message: str = "") -> None:
        m = _WORKER.fullmatch(message) if message.startswith("Caught ") else None
        super().__init__(f"{m[2]} (read by {m[1]})" if m else message)

