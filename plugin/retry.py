"""Which broker failures the plugin waits out, and the record of what it tried: no I/O.

The broker may be down when a request arrives or restart while the plugin waits; none of that is
the sealer's business until the request's deadline. Only an answer that cannot change by
retrying (bad input, a payload over the broker's limit) fails a request early.
"""

from __future__ import annotations

import dataclasses

import grpc

from broker import exceptions as broker_exceptions
from worker.backoff import Outage

#: Codes that say the broker, or the way to it, is not there right now.
TRANSIENT = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL,
})


def code_of(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status of a broker client error; None for one the client raised itself."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, grpc.StatusCode) else None


def is_transient(exc: BaseException, also: frozenset[grpc.StatusCode] = frozenset()) -> bool:
    """Whether trying the same call again later may succeed.

    Errors the client raises without a status (a submit the broker ended without a task, a
    download that arrived damaged) are retried too.
    """
    if isinstance(exc, broker_exceptions.TlsFailed):  # no retry mends a certificate
        return False
    code = code_of(exc)
    return code is None or code in TRANSIENT or code in also


def is_gone(exc: BaseException) -> bool:
    """The broker does not know the task (a new database, or the task was cleaned up)."""
    return code_of(exc) is grpc.StatusCode.NOT_FOUND


def watch_outage(exc: BaseException) -> bool:
    """A watch that failed because the broker went away, to be watched again after a backoff;
    any other failure means the watch cannot be held and the task is polled instead."""
    return code_of(exc) in (grpc.StatusCode.UNAVAILABLE, None)


@dataclasses.dataclass
class Trail:
    """What was tried for one request, for the message when it is given up."""

    task_id: str = ""
    state: str = ""  #: the last state seen, e.g. "running on worker w1, attempt 1/3"
    submits: int = 0
    resets: int = 0
    reruns: int = 0  #: finished, with a result that could not be the proof, and run again
    polls: int = 0
    failures: int = 0  #: calls to the broker that failed and were retried
    last_error: str = ""
    outage: Outage = dataclasses.field(default_factory=Outage)  #: the current one, if any

    def failed(self, what: str, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{what}: {exc}"

    def summary(self) -> str:
        if self.task_id:
            parts = [f"task {self.task_id} was last seen {self.state}",
                     f"submitted {_times(self.submits)}"]
        else:
            parts = ["the broker never accepted the task"]
        if self.resets:
            parts.append(f"reset from error {_times(self.resets)}")
        if self.reruns:
            parts.append(f"run again {_times(self.reruns)} for a result that was not a proof")
        if self.polls:
            parts.append(f"polled {_times(self.polls)} (the watch stream could not be held)")
        if self.failures:
            calls = "1 failed call" if self.failures == 1 else f"{self.failures} failed calls"
            parts.append(f"{calls} to the broker, retried with backoff (the last: "
                         f"{self.last_error})")
        return "; ".join(parts)


def _times(count: int) -> str:
    return {0: "never", 1: "once", 2: "twice"}.get(count, f"{count} times")
