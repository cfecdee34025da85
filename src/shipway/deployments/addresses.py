"""Where an environment is reached: its route's name in the router and its public URL."""

from __future__ import annotations


def route_key(deployment_id: str, environment: str) -> str:
    """The router's name for one (deployment, environment)."""
    return f"{deployment_id}--{environment}"


def public_url(deployment_id: str, environment: str, *, own_port: bool = False) -> str | None:
    """The router address of an environment (``https://hostname`` once it has a certificate;
    ``own_port``: its port-per-environment address), once a rollout has created its route."""
    from shipway.router.base import RouterError
    from shipway.router.current import router_config

    router, key = router_config(), route_key(deployment_id, environment)
    try:
        return router.route_url(key) if own_port else router.public_url(key)
    except (RouterError, KeyError, OSError):
        return None
