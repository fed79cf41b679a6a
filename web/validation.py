"""Reading request bodies: size bound, content type, JSON, and field errors a person can fix.

Every refusal is a problem document naming the field and what was expected; nothing is
stored unless the whole body is valid.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.requests import ClientDisconnect, Request

from web.errors import Problem
from web.strictjson import strict_json_problem


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise Problem(
            415,
            f"Send the body as JSON with `Content-Type: application/json` "
            f"(got {content_type or 'no content type'}).",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise Problem(413, f"The body is larger than {max_bytes} bytes.")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise Problem(413, f"The body is larger than {max_bytes} bytes.")
            chunks.append(chunk)
    except ClientDisconnect:
        raise Problem(400, "The client went away before the body was complete.") from None
    raw = b"".join(chunks)
    if not raw.strip():
        raise Problem(400, "The body is empty; send a JSON object.")
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise Problem(400, "The body is nested too deeply.") from None
    except _NonFiniteNumberError as exc:
        raise Problem(400, f"The body holds {exc.args[0]}, which JSON does not allow.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        where = ""
        if isinstance(exc, json.JSONDecodeError):
            where = f" at line {exc.lineno}, column {exc.colno}"
        raise Problem(400, f"The body is not valid JSON{where}.") from None
    if not isinstance(body, dict):
        raise Problem(422, "The body must be a JSON object.", errors=[])
    return body


class _NonFiniteNumberError(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; our answers (and other clients) cannot.
    raise _NonFiniteNumberError(name)


class Fields:
    """Collects field errors; `done()` raises one 422 naming every bad field."""

    def __init__(self, body: dict[str, Any], allowed: set[str]) -> None:
        self.body = body
        self.errors: list[dict[str, str]] = []
        for name in sorted(set(body) - allowed):
            self.errors.append(
                {"field": name, "message": f"unknown field; expected one of {sorted(allowed)}"}
            )

    def error(self, field: str, message: str) -> None:
        self.errors.append({"field": field, "message": message})

    def text(
        self,
        name: str,
        *,
        required: bool = False,
        max_length: int = 100,
        pattern: re.Pattern[str] | None = None,
        pattern_text: str = "",
    ) -> str | None:
        value = self.body.get(name)
        if value is None:
            if required:
                self.error(name, "required; expected a string")
            return None
        if not isinstance(value, str):
            self.error(name, f"expected a string, got {type(value).__name__}")
            return None
        value = value.strip()
        if required and not value:
            self.error(name, "must not be empty")
            return None
        if len(value) > max_length:
            self.error(name, f"at most {max_length} characters")
            return None
        if pattern is not None and not pattern.fullmatch(value):
            self.error(name, pattern_text or f"must match {pattern.pattern}")
            return None
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.body.get(name, default)
        if not isinstance(value, bool):
            self.error(name, "expected true or false")
            return default
        return value

    def url(self, name: str) -> str | None:
        value = self.text(name, max_length=2000)
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            host = parts.hostname
        except ValueError:
            self.error(name, "expected an http:// or https:// URL with a host")
            return None
        if parts.scheme not in ("http", "https") or not host:
            self.error(name, "expected an http:// or https:// URL with a host")
            return None
        # urlsplit quietly drops tabs and newlines (as browsers do); httpx refuses them, and
        # other characters, only when sending. Refuse here what could never be sent.
        if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
            self.error(name, "must not contain spaces, tabs, newlines or control characters")
            return None
        return value

    def requestable_url(self, name: str, value: str) -> str | None:
        """`value` if httpx can send a request to it (checked when it is saved, not when a
        delivery fails on it), else a field error."""
        try:
            httpx.Request("POST", value)
        except (httpx.InvalidURL, ValueError, UnicodeError) as exc:
            self.error(name, f"not a URL that can be requested ({exc})")
            return None
        return value

    def mapping(self, name: str, max_bytes: int = 4096) -> dict[str, Any]:
        value = self.body.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(name, f"expected an object, got {type(value).__name__}")
            return {}
        problem = strict_json_problem(value)
        if problem is not None:
            self.error(name, f"must be strict JSON: this {problem}")
            return {}
        if len(json.dumps(value)) > max_bytes:
            self.error(name, f"at most {max_bytes} bytes once encoded as JSON")
            return {}
        return value

    def done(self) -> None:
        if self.errors:
            names = ", ".join(e["field"] for e in self.errors)
            raise Problem(422, f"Some fields are not valid: {names}.", errors=self.errors)


MAX_OFFSET = 10**9

# JSON Schema patterns (searched, so anchored here) that accept exactly what the handlers
# accept: values are stripped of surrounding whitespace before they are checked, hence the
# `\s*` at both ends. Python's `re` and str.strip() agree on what whitespace is.


def stripped_pattern(body: str) -> str:
    return rf"^\s*(?:{body})\s*$"


def name_pattern(word_chars: str, max_length: int) -> str:
    """1 to `max_length` of `word_chars` or spaces, not starting or ending with a space."""
    return stripped_pattern(
        rf"[{word_chars}](?:[{word_chars} ]{{0,{max_length - 2}}}[{word_chars}])?"
    )


# An international phone number: an optional +, 7 to 15 digits (the first not 0) with
# spaces, dots, dashes or parentheses between, 6 to 25 characters after the +. Two branches
# so that a length bounds each (no lookahead: fuzzers generate from these patterns).
_DIGITS = r"[1-9](?:[ ()\-.]{0,3}[0-9]){6,14}[ ()\-.]{0,3}"
PHONE_SCHEMAS: list[dict[str, object]] = [
    {"pattern": stripped_pattern(rf"\+{_DIGITS}"), "maxLength": 26},
    {"pattern": stripped_pattern(_DIGITS), "maxLength": 25},
]


def int_param(request: Request, name: str, *, default: int, low: int, high: int) -> int:
    """A whole-number query parameter within bounds, or a 422 naming it."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise Problem(
            422,
            f"Query parameter {name} must be a whole number from {low} to {high}.",
            errors=[{"field": name, "message": f"expected a whole number from {low} to {high}"}],
        )
    return int(raw)


def choice_param(
    request: Request, name: str, allowed: tuple[str, ...], default: str | None = None
) -> str | None:
    """A query parameter that must be one of `allowed`, or a 422 naming it."""
    value = request.query_params.get(name, default)
    if value is not None and value not in allowed:
        raise Problem(
            422,
            f"Query parameter {name} must be one of: {', '.join(allowed)}.",
            errors=[{"field": name, "message": f"expected one of {list(allowed)}"}],
        )
    return value
