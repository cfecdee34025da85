"""Storage metrics of this API process: free space of its data directory, and how often a
write found the disk full (``shipway.storage``)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shipway.storage import data_dir_space, exhausted_counts


class StorageCollector(Collector):
    """Reads the data directory's filesystem on each scrape (one ``statvfs``)."""

    def collect(self) -> Iterator[Metric]:
        space = data_dir_space()
        yield GaugeMetricFamily(
            "shipway_data_dir_free_bytes",
            "Bytes still free on the filesystem of SHIPWAY_DATA_DIR (for unprivileged writers).",
            value=space.free_bytes,
        )
        yield GaugeMetricFamily(
            "shipway_data_dir_size_bytes",
            "Size of the filesystem of SHIPWAY_DATA_DIR.",
            value=space.total_bytes,
        )
        yield GaugeMetricFamily(
            "shipway_data_dir_min_free_bytes",
            "SHIPWAY_MIN_FREE_BYTES: below it the data directory's space is reported low.",
            value=space.min_free_bytes,
        )
        counter = CounterMetricFamily(
            "shipway_storage_exhausted",
            "Writes of this process that found the disk or quota full, by operation: "
            "source_upload, database, write (each answered 507 insufficient_storage), "
            "dispatch (the job stays queued; the relay sends it later).",
            labels=["operation"],
        )
        for operation, n in sorted(exhausted_counts().items()):
            counter.add_metric([operation], n)
        yield counter
