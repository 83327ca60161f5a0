"""The plugin's loop and its pipe ends, without a broker: lines in, a stand-in prover, lines out
through a real pipe."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from plugin import exceptions, protocol, stdio
from plugin.dump import Dumper
from plugin.processor import Processor
from plugin.protocol import C2Request
from plugin.waiter import StagedRequest

PROVER_ID = json.dumps([1] + [0] * 31).encode()


def request_line(request_id: int, sector_id: int) -> bytes:
    return (b'{"id":%d,"task":{"c1out":{},"prover_id":%s,"sector_id":%d,"miner_id":1000}}\n'
            % (request_id, PROVER_ID, sector_id))


class ScriptedProver:
    """Proves sector N with bytes([N]) once `release(N)` is called; sector 666 fails, 667 is a
    bug."""

    def __init__(self, tmp_path: pathlib.Path) -> None:
        self.tmp_path = tmp_path
        self.gates: dict[int, asyncio.Event] = {}
        self.cancelled: list[int] = []

    def release(self, sector_id: int) -> None:
        self.gates.setdefault(sector_id, asyncio.Event()).set()

    async def stage(self, request: C2Request) -> StagedRequest:
        path = self.tmp_path / f"{request.id}"
        path.write_bytes(request.task)
        return StagedRequest(dataclasses.replace(request, task=b""), path)

    async def prove(self, staged: StagedRequest) -> bytes:
        sector = staged.request.sector_id
        assert staged.request.task == b"" and staged.payload.exists()
        try:
            await self.gates.setdefault(sector, asyncio.Event()).wait()
        except asyncio.CancelledError:
            self.cancelled.append(sector)
            raise
        if sector == 666:
            raise exceptions.TaskFailed(task_id="t", sector_id=sector, reason="bad GPU")
        if sector == 667:
            raise RuntimeError("a bug")
        return bytes([sector])


class ListReader:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def feed(self, *lines: bytes | None) -> None:
        for line in lines:
            self.queue.put_nowait(line)

    async def next_line(self) -> bytes | None:
        return await self.queue.get()


@dataclasses.dataclass
class Pipe:
    read_fd: int
    write_fd: int
    received: bytearray = dataclasses.field(default_factory=bytearray)

    def lines(self) -> list[bytes]:
        return [line + b"\n" for line in bytes(self.received).split(b"\n")[:-1]]

    def answers(self) -> dict[int, Any]:
        return {a["id"]: a for a in map(json.loads, self.lines()[1:])}


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    """A pipe whose read end is drained by a thread into `received`."""
    read_fd, write_fd = os.pipe()
    p = Pipe(read_fd, write_fd)

    def drain() -> None:
        while chunk := os.read(read_fd, 65536):
            p.received += chunk

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    yield p
    os.close(write_fd)
    thread.join(5)
    os.close(read_fd)


async def until(condition: Any, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


async def test_answers_go_out_as_requests_finish_and_bad_lines_do_not_stop_the_loop(
    pipe: Pipe, tmp_path: pathlib.Path
) -> None:
    prover, reader = ScriptedProver(tmp_path), ListReader()
    processor = Processor(prover, stdio.LineWriter(pipe.write_fd), Dumper(None))
    run = asyncio.create_task(processor.run(reader))  # type: ignore[arg-type]
    # Given three requests in flight and a few lines that are not requests
    reader.feed(request_line(1, 11), request_line(2, 12), request_line(3, 666),
                b'{"id":4,"task":[]}\n', b"garbage\n", b"\n", request_line(5, 667))
    await until(lambda: len(pipe.lines()) == 2)
    assert pipe.lines()[0] == b"c2 processor ready\n"
    assert "task is not a JSON object" in pipe.answers()[4]["err_msg"]
    # When they finish in another order than they came
    for sector in (12, 666, 667, 11):
        prover.release(sector)
    await until(lambda: len(pipe.answers()) == 5)
    # Then each answer has its id, in the order they finished
    answers = pipe.answers()
    assert list(answers) == [4, 2, 3, 5, 1]
    assert answers[1] == {"id": 1, "err_msg": None, "output": {"proof": [11]}}
    assert answers[2]["output"] == {"proof": [12]}
    assert answers[3]["err_msg"] == "task t sector 666 error reason: bad GPU"
    assert answers[5]["err_msg"].startswith("internal error of the C2 plugin (RuntimeError: a "
                                            "bug)")
    reader.feed(None)
    await run


async def test_lines_json_cannot_decode_are_refused_while_the_good_request_is_answered(
    pipe: Pipe, tmp_path: pathlib.Path
) -> None:
    prover, reader = ScriptedProver(tmp_path), ListReader()
    processor = Processor(prover, stdio.LineWriter(pipe.write_fd), Dumper(None))
    run = asyncio.create_task(processor.run(reader))  # type: ignore[arg-type]
    # Given a request in flight, then an id of 5000 digits and a prover_id 100000 arrays deep
    # (json.loads raises ValueError and RecursionError on them)
    deep = b"[" * 100_000 + b"]" * 100_000
    with structlog.testing.capture_logs() as logs:
        reader.feed(request_line(1, 41), b'{"id":%s,"task":{}}\n' % (b"9" * 5000),
                    request_line(3, 43).replace(PROVER_ID, deep))
        await until(lambda: 3 in pipe.answers())
    # Then the line with an id gets its error, the one without is logged
    assert "prover_id is not a list of 32 bytes" in pipe.answers()[3]["err_msg"]
    [ignored] = [e for e in logs if e["event"].startswith("line ignored")]
    assert ignored["line"].startswith('{"id":999') and ignored["line_bytes"] == 5018
    # And the request in flight is still answered
    prover.release(41)
    await until(lambda: 1 in pipe.answers())
    assert list(pipe.answers()) == [3, 1]
    assert pipe.answers()[1]["output"] == {"proof": [41]}
    reader.feed(None)
    await run


async def test_a_bug_on_one_line_costs_that_line_only(
    pipe: Pipe, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prover, reader = ScriptedProver(tmp_path), ListReader()
    dumper = Dumper(None)
    processor = Processor(prover, stdio.LineWriter(pipe.write_fd), dumper)
    real_parse, real_dump = protocol.parse_request, dumper.request

    def parse(line: bytes) -> C2Request:
        if b"parser bug" in line:
            raise IndexError("a parser bug")
        return real_parse(line)

    def dump(request_id: int | None, line: bytes) -> Any:
        if request_id == 2:
            raise RuntimeError("a bug after the id was read")
        return real_dump(request_id, line)

    monkeypatch.setattr(protocol, "parse_request", parse)
    monkeypatch.setattr(dumper, "request", dump)
    run = asyncio.create_task(processor.run(reader))  # type: ignore[arg-type]
    prover.release(51)
    # Given a line the parser fails on, and one that fails once its id is known
    with structlog.testing.capture_logs() as logs:
        reader.feed(b"parser bug\n", request_line(2, 52), request_line(3, 51))
        await until(lambda: len(pipe.answers()) == 2)
    # Then both are logged with their traceback, the second answered with an error
    failures = [e for e in logs if e["event"] == "line failed unexpectedly"]
    assert [(e["request_id"], e["line"][:8], e["exc_info"]) for e in failures] == [
        (None, "parser b", True), (2, '{"id":2,', True),
    ]
    assert pipe.answers()[2]["err_msg"] == ("internal error of the C2 plugin (RuntimeError: a "
                                            "bug after the id was read); see its log")
    # And the loop went on to serve the next request
    assert pipe.answers()[3]["output"] == {"proof": [51]}
    reader.feed(None)
    await run


async def test_end_of_input_abandons_what_is_in_flight(pipe: Pipe, tmp_path: pathlib.Path) -> None:
    prover, reader = ScriptedProver(tmp_path), ListReader()
    processor = Processor(prover, stdio.LineWriter(pipe.write_fd), Dumper(None))
    run = asyncio.create_task(processor.run(reader))  # type: ignore[arg-type]
    reader.feed(request_line(1, 21))
    await until(lambda: 21 in prover.gates)  # being proved
    reader.feed(b'{"id":2}\n', None)
    await run
    assert prover.cancelled == [21]
    assert not processor.in_flight
    await until(lambda: len(pipe.lines()) == 2)
    assert list(pipe.answers()) == [2]  # the malformed line is still answered


async def test_every_line_is_dumped_by_request_id(pipe: Pipe, tmp_path: pathlib.Path) -> None:
    prover, reader = ScriptedProver(tmp_path), ListReader()
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    processor = Processor(prover, stdio.LineWriter(pipe.write_fd), Dumper(dumps, pid=42))
    prover.release(31)
    reader.feed(request_line(1, 31), b'{"id":2}\n', b"junk\n")
    run = asyncio.create_task(processor.run(reader))  # type: ignore[arg-type]
    await until(lambda: len(pipe.answers()) == 2)
    reader.feed(None)
    await run
    files = {p.name: p.read_bytes() for p in dumps.iterdir()}
    sent = {json.loads(line)["id"]: line for line in pipe.lines()[1:]}
    assert files == {
        "c2-42-1.request": request_line(1, 31), "c2-42-1.response": sent[1],
        "c2-42-2.request": b'{"id":2}\n', "c2-42-2.response": sent[2],
        "c2-42-unknown-1.request": b"junk\n",
    }


async def test_a_reader_gone_away_ends_nothing_but_the_writing(tmp_path: pathlib.Path) -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    writer = stdio.LineWriter(write_fd)
    assert not await writer.write(b"c2 processor ready\n")
    assert not await writer.write(b"more\n") and writer.closed
    os.close(write_fd)


# -- the pipe ends ----------------------------------------------------------------------------


async def test_lines_larger_than_the_pipe_buffer_are_written_whole_and_never_interleave(
    pipe: Pipe,
) -> None:
    writer = stdio.LineWriter(pipe.write_fd)
    lines = [bytes([ord("a") + i]) * 1_000_000 + b"\n" for i in range(4)]
    assert all(await asyncio.gather(*(writer.write(line) for line in lines)))
    await until(lambda: len(pipe.received) == 4_000_004)
    assert sorted(pipe.lines()) == lines


def test_write_all_waits_on_a_non_blocking_pipe(pipe: Pipe) -> None:
    os.set_blocking(pipe.write_fd, False)
    stdio.write_all(pipe.write_fd, b"x" * 1_000_000 + b"\n")
    os.set_blocking(pipe.write_fd, True)
    stdio.write_all(pipe.write_fd, b"y\n")
    deadline = 500
    while len(pipe.received) < 1_000_003 and deadline:
        threading.Event().wait(0.01)
        deadline -= 1
    assert pipe.lines() == [b"x" * 1_000_000 + b"\n", b"y\n"]


async def test_the_reader_yields_lines_then_none() -> None:
    read_fd, write_fd = os.pipe()
    reader = stdio.LineReader(read_fd)
    reader.start()
    os.write(write_fd, b'{"id":1}\n\n' + b"x" * 3_000_000 + b"\nlast without newline")
    os.close(write_fd)
    got = []
    while (line := await reader.next_line()) is not None:
        got.append(line)
    os.close(read_fd)
    assert got == [b'{"id":1}\n', b"\n", b"x" * 3_000_000 + b"\n", b"last without newline"]


async def test_stop_ends_the_lines_while_stdin_is_still_open() -> None:
    read_fd, write_fd = os.pipe()
    reader = stdio.LineReader(read_fd)
    reader.start()
    reader.stop()
    assert await reader.next_line() is None
    os.close(write_fd)  # the thread sees the end and exits
    await asyncio.sleep(0.05)
    os.close(read_fd)


def test_stray_output_goes_to_stderr_once_stdout_is_taken() -> None:
    code = ("import os; from plugin import stdio; fd = stdio.take_stdout(); print('stray'); "
            "os.system('echo child'); stdio.write_all(fd, b'protocol\\n')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30,
                          check=True)
    assert done.stdout == b"protocol\n"
    assert done.stderr.split() == [b"stray", b"child"]


async def test_a_long_line_is_read_while_the_requests_in_flight_go_on(
    pipe: Pipe, tmp_path: pathlib.Path
) -> None:
    prover = ScriptedProver(tmp_path)
    processor = Processor(prover, stdio.LineWriter(pipe.write_fd), Dumper(None))
    # A C2 input of 12 MB in two million small arrays, as vanilla proofs are: walking it takes
    # a good fraction of a second
    vanilla = b"[" + b",".join([b"[1,2]"] * 2_000_000) + b"]"
    line = (b'{"id":1,"task":{"c1out":{"vanilla_proofs":%s},"prover_id":%s,"sector_id":11,'
            b'"miner_id":1000}}\n' % (vanilla, PROVER_ID))
    ticks = 0

    async def in_flight() -> None:  # stands for the uploads and watches of other requests
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(in_flight())
    await asyncio.sleep(0)
    before = ticks
    await processor.accept(line)
    assert ticks - before > 100, "the loop stood still while the line was read"
    other.cancel()
    prover.release(11)
    await until(lambda: len(pipe.lines()) == 1)  # (no ready line: run() was not called)
    assert json.loads(pipe.lines()[0])["output"] == {"proof": [11]}
    assert (tmp_path / "1").read_bytes() == line[line.index(b'{"c1out"'):-2]
