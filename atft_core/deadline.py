"""One total deadline around a blocking call (botocore, HTTP clients).

botocore's timeouts are per connect / per socket read and multiply with retries, and a server
trickling bytes never trips them; so :func:`call_with_deadline` runs the call in a daemon thread
and the caller stops waiting at the deadline. The abandoned thread ends at its own next per-read
timeout and never blocks interpreter exit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class DeadlinePassed(TimeoutError):
    """The call gave no answer within its total deadline."""


def call_with_deadline(fn: Callable[[], T], deadline_s: float, name: str = "atft-call") -> T:
    """``fn()``'s value or its exception, or :class:`DeadlinePassed` after ``deadline_s`` seconds."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the caller below
            box["error"] = err

    t = threading.Thread(target=target, daemon=True, name=name)
    t.start()
    t.join(deadline_s)
    if t.is_alive():
        raise DeadlinePassed(f"no answer within the {deadline_s:g} s deadline")
    if "error" in box:
        raise box["error"]
    return box["value"]
