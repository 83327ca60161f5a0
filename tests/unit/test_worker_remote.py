"""What a worker says of a failed broker call: a broker that answered it cannot serve is not
"no broker" (no network: AioRpcErrors are made here)."""

from __future__ import annotations

import grpc

from broker import exceptions as broker_exceptions
from worker import exceptions
from worker.remote import Remote


def failure(code: grpc.StatusCode, details: str, answered: bool) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata(
        *([(broker_exceptions.ERROR_METADATA_KEY, "StoreUnavailable")] if answered else []))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details)


async def test_a_broker_that_answered_it_cannot_serve_is_told_from_one_not_there() -> None:
    remote = Remote("10.0.0.5:18888,10.0.0.6:18888")
    try:
        busy = remote.translate(failure(grpc.StatusCode.UNAVAILABLE, "Database is unreachable",
                                        answered=True), "take the result")
        assert isinstance(busy, exceptions.BrokerCannotServe)
        assert str(busy) == ("The broker at 10.0.0.5:18888 answered but cannot serve now "
                             "(take the result: Database is unreachable)")
        gone = remote.translate(failure(grpc.StatusCode.UNAVAILABLE, "Socket closed",
                                        answered=False), "take the result")
        assert type(gone) is exceptions.BrokerUnavailable
        assert str(gone).startswith("No broker at 10.0.0.5:18888: is `gpuproxy run` started")
        # The daemon moves on to the next broker after either; the errors name the one called
        assert remote.failover("10.0.0.5:18888", str(gone)) and remote.url == "10.0.0.6:18888"
    finally:
        await remote.close()
