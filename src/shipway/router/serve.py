"""``shipway router run``: own the router's HAProxy in the foreground (external mode).

In a multi-container topology HAProxy runs in a service of its own, which publishes
the route ports; the API, workers and relay set ``SHIPWAY_ROUTER_EXTERNAL=true`` and
only use the sockets of the shared router folder. This process starts HAProxy from the
saved desired state (every route and server the workers recorded), keeps it attached,
and returns when asked to stop, or with an error when HAProxy dies, so that the
container's restart policy starts both again.
"""

from __future__ import annotations

import logging
import threading

from shipway.config import Settings, get_settings
from shipway.router.haproxy import HAProxyRouter

log = logging.getLogger(__name__)
CHECK_SECONDS = 1.0


def run_router(*, stop: threading.Event, settings: Settings | None = None) -> bool:
    """Run HAProxy until ``stop`` is set (True), or until it exits by itself (False)."""
    owner = (settings or get_settings()).model_copy(
        update={"router_external": False, "router_daemon": False}
    )
    router = HAProxyRouter.from_settings(owner)
    router.start()
    log.info(
        "router: HAProxy running from %s, routes on %s ports %s",
        router.directory,
        owner.router_bind_host,
        owner.router_port_range,
    )
    try:
        while not stop.wait(CHECK_SECONDS):
            if not router.is_running():
                log.error("router: HAProxy exited; its log: %s", router.process.log_path)
                return False
        return True
    finally:
        router.stop(timeout=owner.stop_timeout_seconds)
