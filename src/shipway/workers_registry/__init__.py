"""Worker registry: each worker process registers itself and heartbeats, for operator views."""
