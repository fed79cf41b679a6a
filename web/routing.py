"""API routes declared once, with who may call them and what they take and return, so the
Starlette routes, the auth checks and `/openapi.json` all come from the same list."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from config import VERSION
from web.auth import Authenticator, Principal
from web.authlimit import FailedAuthLimiter, client_address
from web.errors import Problem

Access = Literal["public", "user", "admin"]
Handler = Callable[[Request], Awaitable[Response]]

PROBLEM = {"$ref": "#/components/schemas/Problem"}


@dataclass(frozen=True)
class ApiRoute:
    method: str
    path: str
    handler: Handler
    summary: str
    access: Access = "user"
    body: dict[str, Any] | None = None
    responses: dict[int, tuple[str, dict[str, Any] | None]] = field(default_factory=dict)
    query: dict[str, dict[str, Any]] = field(default_factory=dict)
    content_type: str = "application/json"
    # More media types the success response can take (content negotiation), with schemas.
    alt_media: dict[str, dict[str, Any]] = field(default_factory=dict)
    # False: the id under the creation's path is not the one the creation answers with (a
    # received message's WhatsApp id under …/messages/, not a queued message's id).
    creation_link: bool = True


def principal(request: Request) -> Principal:
    found: Principal = request.state.principal
    return found


def _guard(route: ApiRoute) -> Handler:
    if route.access == "public":
        return route.handler

    async def guarded(request: Request) -> Response:
        auth: Authenticator = request.app.state.auth
        limiter: FailedAuthLimiter = request.app.state.auth_limiter
        client = client_address(request)
        wait = limiter.retry_after(client)
        if wait is not None:
            raise Problem(
                429,
                f"Too many failed authentications from this address; try again in {wait}s.",
                headers={"Retry-After": str(wait)},
            )
        who = await auth.authenticate(request)
        if who is None:
            limiter.failed(client)
            raise Problem(
                401,
                "Send a valid token as `Authorization: Bearer <token>` or `X-Api-Key: <token>`.",
                headers={"WWW-Authenticate": 'Bearer realm="wakeful"'},
            )
        if route.access == "admin" and not who.is_admin:
            raise Problem(403, "Only the admin token may use this route.")
        request.state.principal = who
        return await route.handler(request)

    return guarded


def _specificity(path: str) -> list[bool]:
    """Sort key: at each segment, a literal before a parameter, so `…/messages/retry-dead`
    is tried before `…/messages/{message_id}` (Starlette answers a method mismatch from the
    first route whose path matches: OPTIONS on retry-dead got the other route's 405)."""
    return [segment.startswith("{") for segment in path.split("/")]


def starlette_routes(api: list[ApiRoute]) -> list[Route]:
    by_path: dict[str, dict[str, Handler]] = {}
    for route in api:
        by_path.setdefault(route.path, {})[route.method] = _guard(route)
    routes = []
    for path, handlers in sorted(by_path.items(), key=lambda item: _specificity(item[0])):
        if len(handlers) == 1:
            ((method, handler),) = handlers.items()
            routes.append(Route(path, handler, methods=[method]))
        else:
            routes.append(Route(path, _dispatch(handlers), methods=list(handlers)))
    return routes


def _dispatch(handlers: dict[str, Handler]) -> Handler:
    async def by_method(request: Request) -> Response:
        # Starlette lets HEAD through wherever GET is allowed: answer it as GET.
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return by_method


_PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


_ERROR_DESCRIPTIONS = {
    400: "The body is not valid JSON",
    401: "No valid token",
    403: "Not allowed with this token",
    404: "Not found, or not this token's",
    413: "The body is larger than MAX_BODY_BYTES",
    429: "Too many failed authentications from this address; see Retry-After",
    415: "The body is not JSON",
    422: "A field or query parameter is not valid (each one named in `errors`)",
    503: "The database is unreachable; try again after Retry-After seconds",
}


def openapi_document(api: list[ApiRoute]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in api:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": _operation_id(route),
            "responses": {},
        }
        if route.access != "public":
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
            operation["x-access"] = route.access
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_params(route.path)
        ]
        parameters += [
            {"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in route.query.items()
        ]
        if parameters:
            operation["parameters"] = parameters
        if route.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": route.body}},
            }
        for status, (description, schema) in sorted(route.responses.items()):
            response: dict[str, Any] = {"description": description}
            if schema is not None:
                media = route.content_type if status < 300 else "application/problem+json"
                response["content"] = {media: {"schema": schema if status < 300 else PROBLEM}}
                if status < 300:
                    for other, other_schema in route.alt_media.items():
                        response["content"][other] = {"schema": other_schema}
            operation["responses"][str(status)] = response
        errors = {400, 413, 415, 422} if route.body is not None else set()
        if route.query:
            errors |= {422}  # a query parameter out of its range or not one of its choices
        if route.access != "public":
            errors |= {401, 429}
        if route.access == "admin":
            errors |= {403}
        if _path_params(route.path):
            errors |= {404}
        if route.access != "public":
            errors |= {503}  # the token is looked up in the database, which may be away
        for status in sorted(errors):
            documented = operation["responses"].setdefault(
                str(status),
                {
                    "description": _ERROR_DESCRIPTIONS[status],
                    "content": {"application/problem+json": {"schema": PROBLEM}},
                },
            )
            if documented["description"] != _ERROR_DESCRIPTIONS[status]:
                documented["description"] += f"; or: {_ERROR_DESCRIPTIONS[status].lower()}"
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    _link_creations(api, paths)
    return {
        "openapi": "3.1.0",
        "info": {"title": "wakeful", "version": VERSION},
        "paths": paths,
        "components": {
            "schemas": {"Problem": _PROBLEM_SCHEMA},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            },
        },
    }


def _operation_id(route: ApiRoute) -> str:
    slug = route.path.strip("/").replace("/", "_").replace("{", "").replace("}", "")
    return f"{route.method.lower()}_{slug}"


def _link_creations(api: list[ApiRoute], paths: dict[str, dict[str, Any]]) -> None:
    """OpenAPI links from each creation (a POST answering 201 or 202 with an `id`) to every
    operation under `<its path>/{id}`: a client, or a fuzzer, follows them with a real id.
    The creation's own path parameters are passed on from the request."""
    for creation in api:
        created = [status for status in creation.responses if status in (201, 202)]
        if creation.method != "POST" or not created:
            continue
        prefix = creation.path.rstrip("/") + "/{"
        links: dict[str, Any] = {}
        for target in api:
            if not target.path.startswith(prefix) or not target.creation_link:
                continue
            new_id = target.path[len(prefix) :].split("}", 1)[0]
            parameters = {name: f"$request.path.{name}" for name in _path_params(creation.path)}
            parameters[new_id] = "$response.body#/id"
            if set(parameters) != set(_path_params(target.path)):
                continue  # it needs an id this answer does not give
            links[_operation_id(target)] = {
                "operationId": _operation_id(target),
                "parameters": parameters,
                "description": f"{target.summary} (with the new {new_id})",
            }
        if links:
            operation = paths[creation.path][creation.method.lower()]
            for status in created:
                operation["responses"][str(status)]["links"] = links


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")]


def openapi_endpoint(api: list[ApiRoute]) -> Handler:
    document = openapi_document(api)

    async def serve(request: Request) -> Response:
        return JSONResponse(document)

    return serve
