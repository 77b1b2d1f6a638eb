"""Prometheus metrics of one daemon, through prometheus_client.

Counted per request and per transfer, never per TFTP block: a transfer's
bytes and retransmissions are added once, when it ends. Gauges that the
services already know (leases by state, running transfers) are read when
``/metrics`` is scraped, through the callables the services register.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pybootd.observe.timeline import Phase

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series

# Seconds: a DHCP exchange takes milliseconds, a kernel over TFTP minutes.
PHASE_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

Live = Callable[[], Mapping[str, float]]  # label value -> gauge value


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.dhcp_requests = Counter("pybootd_dhcp_requests", "DHCP requests received, by "
                                     "message type", ["type"], registry=registry)
        self.dhcp_replies = Counter("pybootd_dhcp_replies", "DHCP replies sent, by message "
                                    "type", ["type"], registry=registry)
        self.dhcp_ignored = Counter("pybootd_dhcp_ignored", "DHCP requests left unanswered, "
                                    "by reason", ["reason"], registry=registry)
        self.lease_store_errors = Counter("pybootd_lease_store_errors", "Lease store commits "
                                          "that failed (their replies were withheld)",
                                          registry=registry)
        self.tftp_transfers = Counter("pybootd_tftp_transfers", "TFTP transfers ended (and "
                                      "requests refused), by outcome and direction",
                                      ["outcome", "direction"], registry=registry)
        self.tftp_bytes_sent = Counter("pybootd_tftp_bytes_sent", "TFTP payload bytes sent",
                                       registry=registry)
        self.tftp_retransmits = Counter("pybootd_tftp_retransmits", "TFTP packets sent again",
                                        registry=registry)
        self.http_requests = Counter("pybootd_http_requests", "HTTP requests answered, by "
                                     "status", ["status"], registry=registry)
        self.http_bytes_sent = Counter("pybootd_http_bytes_sent", "HTTP body bytes sent",
                                       registry=registry)
        self.cache_requests = Counter("pybootd_cache_requests", "HTTP-root cache lookups, by "
                                      "result (hit, miss, revalidated, stale)", ["result"],
                                      registry=registry)
        self.boot_phase = Histogram("pybootd_boot_phase_seconds", "Spans of machines' boots: "
                                    "the DHCP exchange, ACK to the first file, each file",
                                    ["phase"], buckets=PHASE_BUCKETS, registry=registry)
        self.live = _LiveGauges()
        registry.register(self.live)

    def gauge(self, name: str, doc: str, label: str | None, read: Live) -> None:
        """Read *read* at each scrape: ``{label value: value}`` (label None: ``{"": value}``)."""
        self.live.gauges[name] = (doc, label, read)

    def phases(self, spans: list[tuple[Phase, float]]) -> None:
        for phase, seconds in spans:
            self.boot_phase.labels(str(phase)).observe(seconds)

    def exposition(self) -> bytes:
        """The text format (version 0.0.4) of every metric."""
        return generate_latest(self.registry)


class _LiveGauges(Collector):
    def __init__(self) -> None:
        self.gauges: dict[str, tuple[str, str | None, Live]] = {}

    def collect(self) -> Iterator[Metric]:
        for name, (doc, label, read) in sorted(self.gauges.items()):
            family = GaugeMetricFamily(name, doc, labels=[label] if label else None)
            for key, value in sorted(read().items()):
                family.add_metric([key] if label else [], value)
            yield family

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the families depend on what the services registered
