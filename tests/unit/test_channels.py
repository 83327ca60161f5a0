"""Which broker a client with several calls, as they fail (no network: channels open lazily)."""

from __future__ import annotations

from broker.channels import Brokers, split


def test_a_list_of_brokers_is_split_on_commas() -> None:
    assert split("a:1") == ("a:1",)
    assert split("http://a:1, b:2") == ("http://a:1", "b:2")


async def test_a_failed_broker_moves_the_client_to_the_next_and_round_again() -> None:
    brokers = Brokers("a:1,b:2,c:3")
    assert brokers.url == "a:1"
    assert brokers.failover("a:1", "down")
    assert brokers.url == "b:2"
    assert brokers.failover("b:2", "down") and brokers.failover("c:3", "down")
    assert brokers.url == "a:1"
    await brokers.close()


async def test_calls_failing_together_move_the_client_once() -> None:
    brokers = Brokers("a:1,b:2")
    first = brokers.channel
    # Two calls made to a:1 fail; the second one's failure must not move the client back
    assert brokers.failover("a:1", "down")
    assert not brokers.failover("a:1", "down")
    assert brokers.url == "b:2" and brokers.channel is not first
    # Coming back round reuses the channel opened before
    brokers.failover("b:2", "down")
    assert brokers.channel is first
    await brokers.close()


async def test_a_single_broker_is_kept_whatever_fails() -> None:
    brokers = Brokers("https://only:443")
    assert not brokers.failover("https://only:443", "down")
    assert brokers.url == "https://only:443" and brokers.tls
    await brokers.close()
