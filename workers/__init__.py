"""Celery entrypoints: a thin layer over shipway's job runner."""
