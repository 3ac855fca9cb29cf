"""Realistic snapshots and an in-memory link between two sans-I/O connections."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from ovsndu.model import (
    Conntrack,
    Entry,
    FdbEntry,
    Flow,
    Group,
    Meter,
    Port,
    Route,
    Snapshot,
    TlvMapping,
    TunnelNeighbor,
    VswitchdInfo,
)
from ovsndu.protocol import NEED_DATA, Config, Connection, Event, Message, PeerClosed, Side

TOKEN = b"t" * 32


def conntrack(i: int) -> Conntrack:
    """A TCP conntrack entry shaped like ``dpctl/dump-conntrack`` output."""
    a, b = i >> 8 & 255, i & 255
    return Conntrack(
        protocol="tcp",
        orig=f"src=10.0.{a}.{b},dst=10.1.0.1,sport={1024 + i % 60000},dport=443",
        reply=f"src=10.1.0.1,dst=10.0.{a}.{b},sport=443,dport={1024 + i % 60000}",
        zone=i % 16,
        mark=i % 3,
        labels="0x0",
        state_orig="ESTABLISHED",
        state_reply="ESTABLISHED",
        nat="",
        timeout=431999,
    )


def flow(i: int) -> Flow:
    """An OpenFlow rule shaped like ``ovs-ofctl dump-flows`` output."""
    return Flow(
        bridge="br-int",
        table=i % 64,
        cookie=f"{0x1000 + i:#x}",
        priority=100 + i % 1000,
        match=f"ip,in_port={i % 48 + 1},nw_dst=10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
        actions=f"set_field:{i % 4096}->reg6,resubmit(,{(i + 1) % 64}),output:{i % 48 + 1}",
        idle_timeout=0,
        hard_timeout=0,
        flags=("send_flow_rem",) if i % 7 == 0 else (),
        importance=0,
        duration=12.5 + i,
        n_packets=i * 3,
        n_bytes=i * 400,
        idle_age=i % 100,
        hard_age=None,
    )


def every_category(n: int = 3) -> dict[str, list[Entry]]:
    """*n* entries (at least) of every one of the nine categories."""
    return {
        "ports": [
            Port(bridge="br-int", port=f"vm{i}", interface=f"vm{i}", type="internal",
                 ofport=i + 1, dp_port=i + 2, mac=f"02:00:00:00:00:{i:02x}")
            for i in range(n)
        ] + [Port(bridge="br-int", port="tun0", interface="tun0", type="geneve", ofport=100)],
        "tunnel_neighbors": [
            TunnelNeighbor(bridge="br-phy", ip=f"192.168.1.{i + 1}", mac=f"aa:bb:cc:00:00:{i:02x}")
            for i in range(n)
        ],
        "flows": [flow(i) for i in range(n)],
        "meters": [
            Meter(bridge="br-int", meter_id=i + 1, flags=("kbps", "burst", "stats"),
                  bands=(f"type=drop rate={1000 * (i + 1)} burst_size=100",))
            for i in range(n)
        ],
        "groups": [
            Group(bridge="br-int", group_id=i + 1, type="select", selection_method="hash",
                  properties="fields(ip_dst)",
                  buckets=(f"bucket_id:0,actions=output:{i + 1}",
                           f"bucket_id:1,actions=output:{i + 2}"))
            for i in range(n)
        ] + [Group(bridge="br-int", group_id=999, type="all")],
        "tlv_mappings": [
            TlvMapping(bridge="br-int", tlv_class="0xffff", tlv_type=i, length=4, index=i)
            for i in range(n)
        ],
        "conntrack": [conntrack(i) for i in range(n)],
        "fdb": [
            FdbEntry(bridge="br-int", port=str(i + 1), vlan=i % 3, mac=f"02:aa:00:00:00:{i:02x}",
                     static=i == 0, age=i * 10)
            for i in range(n)
        ] + [FdbEntry(bridge="br-int", port="LOCAL", vlan=0, mac="02:ff:00:00:00:01")],
        "routes": [
            Route(kind="cached", prefix=f"10.{i}.0.0/16", dev="eth0", gateway="10.0.0.1",
                  src="10.0.0.2")
            for i in range(n)
        ] + [Route(kind="user", prefix="192.168.0.0/24", dev="br-phy", pkt_mark=7, local=True)],
    }


def snapshot(n: int = 3) -> Snapshot:
    """A Snapshot holding every category."""
    return Snapshot.build(VswitchdInfo(pid=4242, version="3.3.0"), every_category(n))


def pair(config: Config | None = None, *, client_token: bytes = TOKEN,
         client_config: Config | None = None) -> tuple[Connection, Connection]:
    """A fresh (server, client) pair at time 0."""
    server = Connection(Side.SERVER, token=TOKEN, now=0.0, config=config)
    client = Connection(Side.CLIENT, token=client_token, now=0.0,
                        config=client_config or config)
    return server, client


def feed(conn: Connection, data: bytes, now: float = 0.0, *, rng: random.Random | None = None,
         step: int | None = None) -> list[Event]:
    """Feed *data* in pieces (byte by byte with step=1, random sizes with rng); all events."""
    events: list[Event] = []
    pos = 0
    while pos < len(data):
        size = step or (rng.randint(1, 4096) if rng else len(data))
        conn.receive_data(data[pos : pos + size], now)
        pos += size
        events.extend(drain(conn))
    return events


def drain(conn: Connection) -> list[Event]:
    """Every event available now."""
    events: list[Event] = []
    while (event := conn.next_event()) is not NEED_DATA:
        assert not isinstance(event, type(NEED_DATA))
        events.append(event)
        if isinstance(event, PeerClosed):  # returned again on every call
            break
    return events


def run_sync(server: Connection, client: Connection, snap: Snapshot, *,
             chunk: int = 2, **feed_args: Any) -> Iterator[tuple[str, Message | Event]]:
    """Drive a whole state sync between two connections; yields (who, event) as they arrive."""
    def deliver(src: Connection, dst: Connection, data: bytes) -> list[Event]:
        return feed(dst, data, **feed_args)

    for event in deliver(client, server, client.send(client.own_hello(), 0.0)):
        yield "server", event
    reply = server.negotiate()
    for event in deliver(server, client, server.send(reply, 0.0)):
        yield "client", event
    from ovsndu.protocol import Applied, Chunk, Credit, End

    for category in server.categories:
        entries = snap.categories[category]
        for start in range(0, len(entries), chunk):
            part = entries[start : start + chunk]
            msg = Chunk(category=category, seq=server.next_seq, entries=part)
            for event in deliver(server, client, server.send(msg, 0.0)):
                yield "client", event
                assert isinstance(event, Chunk)
                for back in deliver(client, server, client.send(Credit(seq=event.seq), 0.0)):
                    yield "server", back
        end = End(category=category, count=len(entries), digest=snap.digest(category))
        for event in deliver(server, client, server.send(end, 0.0)):
            yield "client", event
            assert isinstance(event, End)
            applied = Applied(category=category, count=event.count, digest=event.digest)
            for back in deliver(client, server, client.send(applied, 0.0)):
                yield "server", back
