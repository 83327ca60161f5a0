"""Errors of the plugin. Each class docstring is the default message, phrased as the fix.

The message of a request's error is what venus-worker logs as the C2 error of the sector.
"""

from __future__ import annotations

from broker.exceptions import DocumentedError


class PluginError(DocumentedError):
    """The C2 plugin failed: see its log (the processor's stderr in venus-worker's log)."""


class ConfigError(PluginError):
    """Invalid setting {field}: {detail}"""


class MalformedRequest(PluginError):
    """Malformed C2 request: {detail}. Is this processor configured for venus-worker's c2
    stage?"""

    request_id: int | None  #: None when the id itself could not be read


class TaskFailed(PluginError):
    """task {task_id} sector {sector_id} error reason: {reason}"""


class NotAProof(PluginError):
    """Task {task_id} (sector {sector_id}) finished {runs} times, but its result is not a
    proof: {detail}. Check the C2 processor of worker {worker_id}; `gpuproxy tasks show
    {task_id}` has the history. Asking again runs the task again."""


class Refused(PluginError):
    """The broker at {url} refused to {what} for sector {sector_id}: {detail}"""


class GaveUp(PluginError):
    """Gave up on sector {sector_id} after {deadline_s:g} s (--deadline-s): {trail}. Is the
    broker at {url} up (`gpuproxy tasks list`), and are workers proving (`gpuproxy workers
    list`)?"""


class WorkDirUnusable(PluginError):
    """Cannot keep temporary files in {path}: {detail}. The folder must be writable, with room
    for a C1 output per request in flight; or set TMPDIR to another folder."""
