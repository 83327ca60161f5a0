"""Retry and scheduling decisions of the store: pure functions, no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from broker.models import Attempt, Task

#: Attempt outcomes that used up an attempt (a release hands the attempt back).
SPENT_OUTCOMES = ("failed", "requeued")
#: The longest reason kept for one attempt, and the longest error message of a task, in
#: characters: a worker may send a processor's whole output (megabytes), and a row that big
#: exceeds MariaDB's max_allowed_packet, which would fail every write of that task.
REASON_CHARS = 4096
ERROR_MESSAGE_CHARS = 65536


def claim_order(task: Task) -> tuple[int, int, str]:
    """Sort key of init tasks: highest priority first, then oldest, then by id."""
    return (-task.priority, task.created_at, task.id)


#: How a task names the proving key it needs: `zkey=<sha256>` in its comment (groth16 tasks).
_KEY = re.compile(r"(?:^|[\s,;])zkey=([0-9a-fA-F]{64})(?=$|[\s,;])")


def key_comment(sha256: str) -> str:
    """The comment that makes a task name this proving key."""
    return f"zkey={sha256}"


def task_key(comment: str) -> str | None:
    """The sha256 of the proving key a task's comment names, lowercase; None if it names none."""
    found = _KEY.search(comment)
    return found.group(1).lower() if found else None


def should_retry(retryable: bool, attempts: int, max_attempts: int) -> bool:
    """Whether a failed attempt sends the task back to init rather than to error."""
    return retryable and attempts < max_attempts


def retry_delay_ms(attempts: int, base_s: float, max_s: float) -> int:
    """Exponential backoff before a failed attempt is retried: base, 2 x base, 4 x base..."""
    return int(min(base_s * 2 ** max(attempts - 1, 0), max_s) * 1000)


def expiry_reason(task: Task, now_ms: int, processing_timeouts_ms: Mapping[str, int]) -> str:
    """Why the housekeeper takes a running task back; "" when it may keep running."""
    timeout_ms = processing_timeouts_ms.get(task.task_type, 0)
    if timeout_ms > 0 and task.started_at is not None and now_ms - task.started_at >= timeout_ms:
        return f"ran longer than the {task.task_type} processing timeout of {timeout_ms / 1000:g} s"
    if task.lease_expires_at is not None and task.lease_expires_at <= now_ms:
        return f"lease expired: worker {task.worker_id} stopped heartbeating"
    return ""


def exhausted_message(history: Sequence[Attempt]) -> str:
    """The error message of a task that ran out of attempts, listing each spent attempt since
    the last reset: "failed after 2 attempts: #1 on worker w1: lease expired; #2 on ...".

    Attempts are numbered from 1 since the last reset so that the count matches the list.
    """
    spent = [a for a in _since_last_reset(history) if a.outcome in SPENT_OUTCOMES]
    noun = "attempt" if len(spent) == 1 else "attempts"
    parts = [f"#{i} on worker {a.worker_id}: {clipped(a.reason)}" for i, a in enumerate(spent, 1)]
    return clipped(f"failed after {len(spent)} {noun}: " + "; ".join(parts), ERROR_MESSAGE_CHARS)


def clipped(text: str, limit: int = REASON_CHARS) -> str:
    """`text` cut to at most `limit` characters, saying how much was cut (the start is kept:
    it names the error; the rest of a long processor output stays in the worker's log)."""
    if len(text) <= limit:
        return text
    kept = limit - len(f" [... {len(text)} more characters cut]")  # the longest note
    if kept <= 0:
        return text[:limit]
    return text[:kept] + f" [... {len(text) - kept} more characters cut]"


def _since_last_reset(history: Sequence[Attempt]) -> Sequence[Attempt]:
    resets = [i for i, a in enumerate(history) if a.outcome == "reset"]
    return history[resets[-1] + 1 :] if resets else history
