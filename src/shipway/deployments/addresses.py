"""Where an environment is reached: its route's name in the router and its public URL."""

from __future__ import annotations


def route_key(deployment_id: str, environment: str) -> str:
    """The router's name for one (deployment, environment)."""
    return f"{deployment_id}--{environment}"


def public_url(deployment_id: str, environment: str) -> str | None:
    """The router address of an environment, once a rollout has created its route."""
    from shipway.router.base import RouterError
    from shipway.router.current import router_config

    try:
        return router_config().public_url(route_key(deployment_id, environment))
    except (RouterError, KeyError, OSError):
        return None
