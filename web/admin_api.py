"""Users (admin), `/api/me`, the jobs API and the audit log."""

from __future__ import annotations

import re
import secrets
from typing import Any

from loguru import logger
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bot.store import UserRecord
from services.scheduler import Scheduler, UnknownJobError
from web.auth import hash_token, new_token
from web.errors import Problem
from web.routing import ApiRoute, principal
from web.sessions_api import audit, manager
from web.validation import Fields, name_pattern, read_json

log = logger.bind(component="admin")
USER_NAME_RE = re.compile(r"[\w .@+\-]{1,64}")
USER_ID_RE = re.compile(r"usr_[0-9a-f]{12}")
USER_NAME_PATTERN = name_pattern(r"\w.@+\-", 64)
USER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "name", "createdAt"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "createdAt": {"type": "string"},
        "sessions": {"type": "integer"},
        "token": {"type": "string", "description": "shown once, at creation"},
    },
}
JOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "state"],
    "properties": {
        "name": {"type": "string"},
        "state": {"type": "string", "enum": ["scheduled", "running", "paused"]},
        "intervalSeconds": {"type": "number"},
        "nextRunAt": {"type": ["string", "null"]},
        "lastRunAt": {"type": ["string", "null"]},
        "lastResult": {},
        "lastError": {"type": ["string", "null"]},
    },
}


def _user_json(request: Request, user: UserRecord) -> dict[str, Any]:
    return {
        "id": user.id,
        "name": user.name,
        "createdAt": user.created_at.isoformat(),
        "sessions": manager(request).count_for(user.id),
    }


async def create_user(request: Request) -> Response:
    body = await read_json(request, request.app.state.settings.max_body_bytes)
    fields = Fields(body, {"name"})
    name = fields.text(
        "name",
        required=True,
        max_length=64,
        pattern=USER_NAME_RE,
        pattern_text="letters, digits, spaces and . @ + - _ only (1 to 64)",
    )
    fields.done()
    assert name is not None
    mgr = manager(request)
    token = new_token()
    user = UserRecord(id="usr_" + secrets.token_hex(6), name=name, created_at=mgr.clock.now())
    await mgr.store.create_user(user, hash_token(token))
    await audit(request, "user.create", user.id, name)
    log.info("User '{}' ({}) created", name, user.id)
    # The one time the token is shown; only its hash is stored. Never kept by a cache.
    return JSONResponse(
        {**_user_json(request, user), "token": token},
        status_code=201,
        headers={"Cache-Control": "no-store"},
    )


async def list_users(request: Request) -> Response:
    users = await manager(request).store.list_users()
    return JSONResponse({"users": [_user_json(request, u) for u in users]})


async def delete_user(request: Request) -> Response:
    user_id = request.path_params["user_id"]
    mgr = manager(request)
    user = await mgr.store.get_user(user_id) if USER_ID_RE.fullmatch(user_id) else None
    if user is None:
        raise Problem(404, f"There is no user '{user_id[:40]}'.")
    removed = await mgr.delete_user_sessions(user.id)
    await mgr.store.delete_user(user.id)
    request.app.state.auth.forget_user(user.id)
    await audit(request, "user.delete", user.id, f"{user.name}; {removed} bot(s) deleted")
    log.info("User '{}' ({}) deleted with {} bot(s)", user.name, user.id, removed)
    return Response(status_code=204)


async def me(request: Request) -> Response:
    who = principal(request)
    mgr = manager(request)
    return JSONResponse(
        {
            "id": who.user_id,
            "name": who.name,
            "isAdmin": who.is_admin,
            "sessions": len(mgr.list_visible(who.owner_scope)),
            "maxSessions": None if who.is_admin else mgr.config.max_sessions_per_user,
        }
    )


def _scheduler(request: Request) -> Scheduler:
    found: Scheduler = request.app.state.scheduler
    return found


def _job_name(request: Request) -> str:
    name: str = request.path_params["name"]
    if name not in _scheduler(request).names():
        known = ", ".join(_scheduler(request).names())
        raise Problem(404, f"There is no job '{name[:40]}'; the jobs are: {known}.")
    return name


async def list_jobs(request: Request) -> Response:
    scheduler = _scheduler(request)
    return JSONResponse({"jobs": [scheduler.describe(name) for name in scheduler.names()]})


async def run_job(request: Request) -> Response:
    name = _job_name(request)
    await audit(request, "job.run", name, None)
    log.info("Manual run of job {} requested by {}", name, principal(request).label)
    try:
        await _scheduler(request).run_now(name)
    except UnknownJobError:
        raise Problem(404, f"There is no job '{name}'.") from None
    return JSONResponse(_scheduler(request).describe(name))


async def pause_job(request: Request) -> Response:
    name = _job_name(request)
    _scheduler(request).pause(name)
    await audit(request, "job.pause", name, None)
    log.info("Job {} paused by {}", name, principal(request).label)
    return JSONResponse(_scheduler(request).describe(name))


async def resume_job(request: Request) -> Response:
    name = _job_name(request)
    _scheduler(request).resume(name)
    await audit(request, "job.resume", name, None)
    log.info("Job {} resumed by {}", name, principal(request).label)
    return JSONResponse(_scheduler(request).describe(name))


async def audit_log(request: Request) -> Response:
    entries = await manager(request).store.audit_entries(100)
    return JSONResponse({"entries": entries})


ADMIN_ROUTES = [
    ApiRoute(
        "POST",
        "/api/users",
        create_user,
        "Create a user; its token is in this answer only",
        access="admin",
        body={
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {
                    "type": "string",
                    "pattern": USER_NAME_PATTERN,
                    "description": "letters, digits, spaces and . @ + - _ (1 to 64)",
                }
            },
        },
        responses={201: ("Created, with its token", USER_SCHEMA)},
    ),
    ApiRoute(
        "GET",
        "/api/users",
        list_users,
        "List users",
        access="admin",
        responses={200: ("The users", {"type": "object"})},
    ),
    ApiRoute(
        "DELETE",
        "/api/users/{user_id}",
        delete_user,
        "Delete a user and stop and delete their bots",
        access="admin",
        responses={204: ("Deleted", None)},
    ),
    ApiRoute(
        "GET",
        "/api/me",
        me,
        "Who this token is",
        responses={200: ("The caller", {"type": "object"})},
    ),
    ApiRoute(
        "GET",
        "/api/jobs",
        list_jobs,
        "Periodic jobs with their last run",
        access="admin",
        responses={200: ("The jobs", {"type": "object"})},
    ),
    ApiRoute(
        "POST",
        "/api/jobs/{name}/run",
        run_job,
        "Run a job's step now and return its result",
        access="admin",
        responses={200: ("The job after the run", JOB_SCHEMA)},
    ),
    ApiRoute(
        "POST",
        "/api/jobs/{name}/pause",
        pause_job,
        "Pause a job",
        access="admin",
        responses={200: ("The job", JOB_SCHEMA)},
    ),
    ApiRoute(
        "POST",
        "/api/jobs/{name}/resume",
        resume_job,
        "Resume a job",
        access="admin",
        responses={200: ("The job", JOB_SCHEMA)},
    ),
    ApiRoute(
        "GET",
        "/api/audit",
        audit_log,
        "The newest 100 manual actions, with who did them",
        access="admin",
        responses={200: ("The audit log", {"type": "object"})},
    ),
]
