"""Where a replica is reached: the endpoint the runtime reports (pure logic)."""

from __future__ import annotations

import pytest

from shipway.config import Settings, get_settings
from shipway.releases.traffic import server_of, servers_of
from shipway.runtime.base import Endpoint, Replica
from shipway.runtime.docker_inspect import _reachable


def replica(*, address: str | None, port: int | None, name: str = "sw-rel-0") -> Replica:
    return Replica(
        id="c1",
        name=name,
        labels={},
        status="running",
        exit_code=None,
        restart_count=0,
        host_port=port,
        address=address,
    )


def test_an_endpoint_is_an_address_and_a_port() -> None:
    assert Endpoint("10.0.0.7", 31001).url("/healthz") == "http://10.0.0.7:31001/healthz"
    assert Endpoint("fd00::7", 31001).url() == "http://[fd00::7]:31001"
    assert replica(address="10.0.0.7", port=31001).endpoint == Endpoint("10.0.0.7", 31001)
    assert replica(address="10.0.0.7", port=None).endpoint is None
    assert replica(address=None, port=31001).endpoint is None


def test_router_servers_use_the_reported_endpoint() -> None:
    on_node = replica(address="10.0.0.7", port=31001)
    server = server_of(on_node, weight=30, state="drain")
    assert (server.address, server.port, server.weight, server.state) == (
        "10.0.0.7",
        31001,
        30,
        "drain",
    )
    gone = replica(address=None, port=None, name="sw-rel-1")
    assert [s.name for s in servers_of([on_node, gone])] == ["sw-rel-0"]
    with pytest.raises(ValueError, match="publishes no endpoint"):
        server_of(gone)


def test_a_wildcard_binding_is_reached_on_the_configured_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHIPWAY_REPLICA_ADDRESS", "192.168.50.2")
    get_settings.cache_clear()
    try:
        assert Settings().replica_address == "192.168.50.2"
        assert _reachable("0.0.0.0") == _reachable("") == _reachable("::") == "192.168.50.2"
        assert _reachable("10.1.2.3") == "10.1.2.3"
    finally:
        monkeypatch.delenv("SHIPWAY_REPLICA_ADDRESS")
        get_settings.cache_clear()
