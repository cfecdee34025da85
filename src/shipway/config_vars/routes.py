"""HTTP route reading an environment's config (changing it is a release: releases/config_routes)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from shipway.auth.deps import get_session, reader
from shipway.auth.service import Principal
from shipway.config_vars import service
from shipway.config_vars.schemas import ConfigRead
from shipway.deployments.routes import ENVIRONMENT
from shipway.deployments.service import get_deployment, validate_environment_name
from shipway.schemas import error_responses

router = APIRouter(tags=["config"])
PATH = "/deployments/{deployment_id}/environments/{environment}/config"


@router.get(PATH, response_model=ConfigRead, responses=error_responses(401, 403, 404, 422))
def list_config(
    deployment_id: str,
    environment: str = ENVIRONMENT,
    principal: Principal = Depends(reader),
    session: Session = Depends(get_session),
) -> ConfigRead:
    """The environment's config vars: plain values; of secrets only that they are set,
    the version that set them and when (never their values)."""
    with session.begin():
        get_deployment(session, deployment_id=deployment_id, workspace_id=principal.workspace_id)
        validate_environment_name(environment)
        row = service.latest(session, deployment_id=deployment_id, environment=environment)
        return ConfigRead.of(row, deployment_id=deployment_id, environment=environment)
