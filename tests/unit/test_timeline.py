"""The boot timeline on values: correlation by address, spans, bounds."""

from __future__ import annotations

import pytest

from pybootd.observe.timeline import Phase, Source, Timeline

MAC = "52:54:00:12:34:56"


def test_a_boot_in_order_with_its_spans() -> None:
    t = Timeline()
    assert t.dhcp(100.0, MAC, "DISCOVER", "offer", ip="192.0.2.10") == []
    spans = t.dhcp(100.4, MAC, "REQUEST", "ack", ip="192.0.2.10", file="pxelinux.0")
    assert [phase for phase, _ in spans] == [Phase.DISCOVER_TO_ACK]
    assert spans[0][1] == pytest.approx(0.4)
    mac, spans = t.file(103.0, "192.0.2.10", Source.TFTP, "pxelinux.0", "complete",
                        nbytes=42000, seconds=1.0)
    assert mac == MAC
    assert [phase for phase, _ in spans] == [Phase.ACK_TO_FIRST_FILE, Phase.FILE]
    assert [seconds for _, seconds in spans] == pytest.approx([1.6, 1.0])
    mac, spans = t.file(110.0, "192.0.2.10", Source.HTTP, "/linux", "200", served="linux",
                        nbytes=7, seconds=2.0)
    assert spans == [(Phase.FILE, 2.0)]  # only the first file after an ACK
    machine = t.machine(MAC)
    assert machine is not None and machine.ip == "192.0.2.10" and machine.phase == "http /linux"
    assert [(e.source, e.what, e.outcome, e.file) for e in machine.events] == [
        (Source.DHCP, "DISCOVER", "offer", None), (Source.DHCP, "REQUEST", "ack", "pxelinux.0"),
        (Source.TFTP, "pxelinux.0", "complete", "pxelinux.0"),
        (Source.HTTP, "/linux", "200", "linux")]
    assert machine.events[2].as_json()["bytes"] == 42000


def test_an_unknown_address_asks_the_pool_then_gives_up() -> None:
    t = Timeline(mac_of=lambda ip: MAC if ip == "192.0.2.20" else None)
    assert t.file(5.0, "192.0.2.20", Source.TFTP, "a", "complete")[0] == MAC
    mac, spans = t.file(5.0, "192.0.2.99", Source.TFTP, "a", "complete", seconds=0.5)
    assert mac is None and spans == [(Phase.FILE, 0.5)]  # still timed, put down to no one
    assert [m.mac for m in t.machines()] == [MAC]


def test_bounded_events_and_machines_oldest_out() -> None:
    t = Timeline(per_machine=3, machines=2)
    for i in range(5):
        t.dhcp(float(i), MAC, "DISCOVER", "ignore", why=f"try {i}")
    machine = t.machine(MAC)
    assert machine is not None and [e.why for e in machine.events] == ["try 2", "try 3", "try 4"]
    t.dhcp(10.0, "02:00:00:00:00:01", "DISCOVER", "offer", ip="192.0.2.11")
    t.dhcp(11.0, "02:00:00:00:00:02", "DISCOVER", "offer", ip="192.0.2.12")
    assert [m.mac for m in t.machines()] == ["02:00:00:00:00:02", "02:00:00:00:00:01"]
    t.dhcp(12.0, "02:00:00:00:00:03", "DISCOVER", "offer", ip="192.0.2.13")
    # The machine that went out takes its address with it.
    assert t.file(13.0, "192.0.2.11", Source.TFTP, "a", "complete")[0] is None
