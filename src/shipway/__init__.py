"""shipway: a build-and-promote control plane."""

__version__ = "0.1.0"
