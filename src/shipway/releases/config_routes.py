"""HTTP route changing an environment's config: a new config version and its release."""

from __future__ import annotations

from fastapi import APIRouter, BackgroundTasks, Depends
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from shipway.auth.deps import get_session, writer
from shipway.auth.service import Principal
from shipway.config_vars.routes import PATH
from shipway.config_vars.schemas import ConfigChanged, ConfigPatch, ConfigRead
from shipway.deployments.routes import ENVIRONMENT
from shipway.jobs.dispatch import Queued, dispatch_after_commit
from shipway.jobs.lines import queue_position
from shipway.jobs.schemas import JobRead
from shipway.releases.config_release import ConfigOutcome, change_config
from shipway.schemas import error_responses

router = APIRouter(tags=["config"])


def _answer(session: Session, outcome: ConfigOutcome, deployment_id: str, env: str) -> JSONResponse:
    read = ConfigRead.of(outcome.config, deployment_id=deployment_id, environment=env)
    job = None
    if outcome.rollout is not None:
        job = JobRead.model_validate(outcome.rollout.job)
        job.queue_position = queue_position(session, job=outcome.rollout.job)
    answer = ConfigChanged(
        **read.model_dump(),
        changed=outcome.changed,
        release_id=outcome.rollout.release.id if outcome.rollout else None,
        job=job,
    )
    return JSONResponse(answer.model_dump(mode="json"), status_code=202 if job else 200)


@router.patch(
    PATH,
    name="change_config",  # the operation id (a generated client's function)
    response_model=ConfigChanged,
    responses={202: {"model": ConfigChanged}, **error_responses(400, 401, 403, 404, 413, 422)},
)
def change(
    body: ConfigPatch,
    deployment_id: str,
    background: BackgroundTasks,
    environment: str = ENVIRONMENT,
    principal: Principal = Depends(writer),
    session: Session = Depends(get_session),
) -> JSONResponse:
    """Set and unset vars (secrets write-only). 202 with the release that rolls the new config
    out when the environment serves one (no rebuild; its policy's strategy); 200 otherwise,
    or when nothing changed. Bad names or values: 422, nothing written."""
    with session.begin():
        outcome = change_config(
            session,
            workspace_id=principal.workspace_id,
            deployment_id=deployment_id,
            environment=environment,
            change=body.change(),
            actor=principal.actor,
        )
        answer = _answer(session, outcome, deployment_id, environment)
    if outcome.rollout is not None:
        background.add_task(dispatch_after_commit, [Queued.of(outcome.rollout.job)])
    return answer
