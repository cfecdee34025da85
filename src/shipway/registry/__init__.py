"""registry: the Docker registry (Distribution HTTP API v2) that versions' images live in."""
