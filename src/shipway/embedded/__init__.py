"""Embedded mode (``shipway up``): everything in one command on one machine."""

from shipway.embedded.up import run_up

__all__ = ["run_up"]
