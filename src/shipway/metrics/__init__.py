"""Prometheus metrics read from the database on each scrape."""
