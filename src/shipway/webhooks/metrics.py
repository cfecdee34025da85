"""Webhook metrics for ``/metrics``: deliveries by state, attempts by outcome (fleet-wide)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from shipway.db import engine_for, session_factory
from shipway.webhooks.models import WebhookAttempt, WebhookDelivery

STATES = ("pending", "succeeded", "failed")


class WebhookCollector(Collector):
    """Reads the webhook tables of one database on each scrape (two GROUP BY counts)."""

    def __init__(self, database_url: str) -> None:
        self.maker = session_factory(engine_for(database_url))

    def collect(self) -> Iterator[Metric]:
        with self.maker() as session, session.begin():
            states = {
                row[0]: int(row[1])
                for row in session.execute(
                    select(WebhookDelivery.state, func.count()).group_by(WebhookDelivery.state)
                )
            }
            outcomes = {
                row[0]: int(row[1])
                for row in session.execute(
                    select(WebhookAttempt.outcome, func.count()).group_by(WebhookAttempt.outcome)
                )
            }
        deliveries = GaugeMetricFamily(
            "shipway_webhook_deliveries",
            "Webhook deliveries by state (pending, succeeded, failed: given up).",
            labels=["state"],
        )
        for state in STATES:
            deliveries.add_metric([state], states.get(state, 0))
        yield deliveries
        attempts = CounterMetricFamily(
            "shipway_webhook_attempts",
            "Webhook requests sent, by outcome (succeeded: a 2xx answer).",
            labels=["outcome"],
        )
        for outcome in ("succeeded", "failed"):
            attempts.add_metric([outcome], outcomes.get(outcome, 0))
        yield attempts
