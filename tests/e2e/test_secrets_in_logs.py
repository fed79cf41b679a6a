"""No secret leaks: a real `python server.py` in demo mode with every secret setting set to a
distinctive value, the whole flow run through the HTTP API (a user, a bot with a webhook, its
secret rotated, linking through the simulated phone, a message out, messages in, keep-alive
pings with the heartbeat, alerts, the dashboard's sign-in, wrong tokens, deleting the user,
SIGTERM). Collected: every log line at DEBUG with the access log on, every API answer (body
and headers; every GET route of /openapi.json, as the admin, the user, nobody and the
dashboard's cookie), every notification and webhook body sent out, and what is at rest (the
files under DATA_DIR and the rows of the database) while the bot is linked and after the stop.
No secret, nor an obvious transform of it (URL-encoded; 12 characters of it in a row; the
password, secret path or query of a URL), may appear anywhere but in the one answer that shows
it once.

Run twice: text logs on SQLite with the keep-alive pinging this server's own `/health?token=`;
JSON logs (which carry extra fields) on Postgres (the suite's), with the
keep-alive target failing three times (an alert naming it) and recovering, the heartbeat monitor
refusing, and WEBHOOK_URL's receiver refusing (dead deliveries, logged)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
from sqlalchemy.engine import make_url

from config import ConfigError, load_settings
from services.alerts import AlertConfigError, Alerter
from services.clock import SystemClock
from tests.support import (
    Receiver,
    ServerProcess,
    chromium_for_tests,
    free_port,
    fresh_postgres_database,
    kill_strays,
    run_server_once,
    wait_until,
)

WAIT = 30.0
WINDOW = 12  # this many characters of a secret in a row count as a leak of it
STRIDE = 4  # so any WINDOW + STRIDE - 1 characters in a row contain a checked fragment
CUSTOMER = "+15550001111"


def _random(label: str) -> str:
    """A distinctive secret; `+/=~` in it so that URL-encoding changes it."""
    return f"{label}-{secrets.token_hex(12)}+/={secrets.token_urlsafe(9)}~"


def _plain(label: str) -> str:
    """A distinctive secret that sits in a URL as it is (a path segment, a password)."""
    return f"{label}{secrets.token_hex(14)}"


@dataclass(frozen=True)
class Secret:
    name: str
    value: str
    # The parts that are secret: for a URL its password, secret path segment or query
    # value (its scheme and host are not); for anything else the value itself.
    pieces: tuple[str, ...] = ()
    # Labels of the answers allowed to show it: the one-time display.
    shown_in: tuple[str, ...] = ()
    # Also looked for at rest (DATA_DIR and the database).
    at_rest: bool = True

    def secret_parts(self) -> tuple[str, ...]:
        return self.pieces or (self.value,)

    def needles(self) -> list[str]:
        """The value and each secret part, as they are and URL-encoded, and fragments of
        each secret part (a truncated or re-wrapped leak)."""
        found: list[str] = []
        for text in (self.value, *self.secret_parts()):
            found += [text, quote(text, safe=""), quote_plus(text)]
        for part in self.secret_parts():
            for start in range(0, max(len(part) - WINDOW, 0) + 1, STRIDE):
                found.append(part[start : start + WINDOW])
        return list(dict.fromkeys(found))


@dataclass(frozen=True)
class Seen:
    """One thing that left the server or stayed on its disk: a log line, an API answer, a
    notification's body, a file."""

    label: str
    text: str


def leaks(all_secrets: list[Secret], seen: list[Seen]) -> list[str]:
    """Where a secret shows up, except in the answers allowed to show it (which must): one
    line per secret and kind of place, with the first example and how many more."""
    found: list[str] = []
    for secret in all_secrets:
        needles = secret.needles()
        displays = 0
        places: dict[str, list[str]] = {}
        for item in seen:
            if item.label in secret.shown_in:
                displays += int(secret.value in item.text)
                continue
            for needle in needles:
                at = item.text.find(needle)
                if at >= 0:
                    context = item.text[max(at - 100, 0) : at + len(needle) + 40]
                    places.setdefault(item.label, []).append(context)
                    break
        for label, contexts in places.items():
            more = f" (and {len(contexts) - 1} more)" if len(contexts) > 1 else ""
            found.append(f"{secret.name} in {label}{more}: …{contexts[0]!r}…")
        assert displays == sum(1 for s in seen if s.label in secret.shown_in), (
            f"{secret.name} is missing from its one-time display"
        )
    return found


# The outside world ---------------------------------------------------------------------


@dataclass
class Receivers:
    hub: Receiver  # the bot's own webhook, and ALERT_URLS
    monitor: Receiver  # HEARTBEAT_URL
    operator: Receiver  # WEBHOOK_URL
    peer: Receiver  # the keep-alive's target, when it is not this server

    def all(self) -> list[Receiver]:
        return [self.hub, self.monitor, self.operator, self.peer]


@dataclass
class Run:
    server: ServerProcess
    receivers: Receivers
    admin: str
    secrets: list[Secret] = field(default_factory=list)
    answers: list[Seen] = field(default_factory=list)

    def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        header: str = "authorization",
        label: str | None = None,
        client: httpx.Client | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request, its answer recorded (status, every header, the body)."""
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers[header] = f"Bearer {token}" if header == "authorization" else token
        if client is None:
            response = httpx.request(
                method, self.server.base_url + path, headers=headers, timeout=20, **kwargs
            )
        else:
            response = client.request(method, path, headers=headers, **kwargs)
        head = "\n".join(f"{k}: {v}" for k, v in response.headers.multi_items())
        body = response.content.decode("utf-8", "replace")
        text = f"HTTP {response.status_code}\n{head}\n\n{body}"
        self.answers.append(Seen(label or f"{method} {path}", text))
        return response

    def json(self, response: httpx.Response, status: int = 200) -> dict[str, Any]:
        assert response.status_code == status, f"{response.status_code}: {response.text}"
        found: dict[str, Any] = response.json()
        return found

    def as_admin(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return self.json(self.call(method, path, token=self.admin, **kwargs))

    def run_job(self, name: str) -> dict[str, Any]:
        return self.as_admin("POST", f"/api/jobs/{name}/run")

    def simulate(self, bot_id: str, token: str, action: str, **data: str) -> None:
        body = {"action": action, **data}
        self.json(self.call("POST", f"/api/sessions/{bot_id}/simulator", token=token, json=body))

    def wait_state(self, bot_id: str, token: str, state: str) -> None:
        seen: list[str] = []

        def reached() -> bool:
            found = self.json(self.call("GET", f"/api/sessions/{bot_id}", token=token))
            seen.append(found["state"])
            return seen[-1] == state

        try:
            wait_until(reached, WAIT, f"{bot_id} to be {state}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; it is {seen[-1:]}:\n{self.server.log}") from None


# The scenarios -------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    log_format: str
    postgres: bool
    # The keep-alive pings this server's own /health (the access log sees its token), or a
    # peer that fails three times and recovers, while the monitor and WEBHOOK_URL refuse.
    self_ping: bool


SCENARIOS = {
    "text-sqlite-self-ping": Scenario("text", postgres=False, self_ping=True),
    "json-postgres-failing-peers": Scenario("json", postgres=True, self_ping=False),
}


@pytest.fixture(params=list(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> Scenario:
    return SCENARIOS[request.param]


@pytest.fixture
def postgres_database(scenario: Scenario, request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The URL of a fresh Postgres database (dropped after), or None for SQLite."""
    if not scenario.postgres:
        yield None
        return
    server_url: str = request.getfixturevalue("postgres_url")
    with fresh_postgres_database(server_url, "wakeful_secrets") as name:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)


def test_no_secret_in_logs_answers_or_storage(
    tmp_path: Path, scenario: Scenario, postgres_database: str | None
) -> None:
    data_dir = tmp_path / "data"
    admin = _random("AdminTok")
    encryption_key = _random("EncKey")
    secret_key = _random("CookieKey")
    webhook_secret = _random("GlobalWhsec")
    wrong = "wk_" + _plain("WrongTok")
    global_path, global_query = _plain("GlobalPath"), _plain("GlobalQuery")
    heartbeat_path, heartbeat_query = _plain("HeartbeatPath"), _plain("HeartbeatQuery")
    alert_password, alert_path = _plain("AlertPw"), _plain("AlertPath")
    keepalive_token = _plain("KeepaliveTok")
    bot_hook_password = _plain("BotHookPw")
    db_password = _plain("DbPw")

    with contextlib.ExitStack() as stack:
        receivers = Receivers(*(stack.enter_context(Receiver()) for _ in range(4)))
        global_url = receivers.operator.url(path=f"/global/{global_path}?sig={global_query}")
        heartbeat_url = receivers.monitor.url(path=f"/hb/{heartbeat_path}?key={heartbeat_query}")
        alert_url = (
            f"json://alerter:{alert_password}@127.0.0.1:{receivers.hub.port}/alerts/{alert_path}"
        )
        bot_hook = f"http://hookuser:{bot_hook_password}@127.0.0.1:{receivers.hub.port}/bot-hook"
        env = {
            "LOG_LEVEL": "DEBUG",
            "LOG_FORMAT": scenario.log_format,
            "ACCESS_LOG": "true",
            "ADMIN_TOKEN": admin,
            "SESSION_ENCRYPTION_KEY": encryption_key,
            "SECRET_KEY": secret_key,
            "WEBHOOK_URL": global_url,
            "WEBHOOK_SECRET": webhook_secret,
            "WEBHOOK_ALLOW_PRIVATE": "true",
            "HEARTBEAT_URL": heartbeat_url,
            "ALERT_URLS": alert_url,
            "KEEP_ALIVE_ENABLED": "true",
            "KEEP_ALIVE_INTERVAL": "1h",  # pings only when the test runs the job
            "KEEP_ALIVE_START_DELAY": "1h",
            "BOT_ENGINE": "whatsapp",
            "WHATSAPP_SIMULATOR": "1",
            "CHROMIUM_PATH": chromium_for_tests(),
            "SIMULATOR_QR_EVERY": "20s",
            "SEND_RATE": "0",
            "PROFILE_BACKUP_DELAY": "500ms",
            "SHUTDOWN_TIMEOUT": "10s",
            # Every GET route is also called with no token: more 401s than the default
            # limit of failed authentications lets one address make in a minute.
            "AUTH_MAX_FAILURES": "1000",
        }
        database_url: str | None = None
        if postgres_database is not None:
            # Trust authentication ignores the password; the server still holds it.
            database_url = (
                make_url(postgres_database)
                .set(drivername="postgresql", password=db_password)
                .render_as_string(hide_password=False)
            )
            env["DATABASE_URL"] = database_url
        server = ServerProcess(data_dir, env)
        target = server if scenario.self_ping else receivers.peer
        keepalive_url = f"http://127.0.0.1:{target.port}/health?token={keepalive_token}"
        server.env["KEEPALIVE_URL"] = keepalive_url
        if not scenario.self_ping:
            receivers.monitor.status = 404
            receivers.operator.status = 410

        run = Run(server=server, receivers=receivers, admin=admin)
        run.secrets = [
            Secret("ADMIN_TOKEN", admin),
            Secret("SESSION_ENCRYPTION_KEY", encryption_key),
            Secret("SECRET_KEY", secret_key),
            Secret("WEBHOOK_SECRET", webhook_secret),
            Secret("WEBHOOK_URL", global_url, (global_path, global_query)),
            Secret("HEARTBEAT_URL", heartbeat_url, (heartbeat_path, heartbeat_query)),
            Secret("ALERT_URLS", alert_url, (alert_password, alert_path)),
            Secret("KEEPALIVE_URL's token", keepalive_url, (keepalive_token,), at_rest=False),
            # A bot's own webhook URL is shown to its owner (without the password) and
            # stored as given; its password is never shown.
            Secret("a bot's webhook password", bot_hook, (bot_hook_password,), at_rest=False),
            Secret("a wrong token", wrong),
        ]
        if database_url is not None:
            run.secrets.append(Secret("DATABASE_URL", database_url, (db_password,)))

        with server:
            server.wait_ready()  # the default: room for the boot preflight on a loaded machine
            stored = _flow(run, scenario, wrong=wrong, bot_hook=bot_hook, database_url=database_url)
            assert server.stop(signal.SIGTERM, timeout=30) == 0, server.log
            assert kill_strays(data_dir) == 0

    _check_the_flow_ran(run, scenario, keepalive_token=keepalive_token)
    found = leaks(run.secrets, _everything_seen(run, scenario))
    stored += _stored(data_dir, database_url, "after the stop")
    found += leaks([s for s in run.secrets if s.at_rest], stored)
    assert not found, "Secrets leaked:\n" + "\n".join(found)


def _flow(
    run: Run, scenario: Scenario, *, wrong: str, bot_hook: str, database_url: str | None
) -> list[Seen]:
    """Everything a user does, through the HTTP API; returns what was at rest at its height
    (the bot linked, before the user and their bots are deleted)."""
    openapi = run.json(run.call("GET", "/openapi.json"))

    # A user, whose token is shown once.
    created = run.json(
        run.call("POST", "/api/users", token=run.admin, json={"name": "alice"}, label="user"),
        201,
    )
    alice, alice_id = created["token"], created["id"]
    run.secrets.append(Secret("a user's token", alice, shown_in=("user",)))

    # A bot with its own webhook; its signing secret is shown once, then rotated.
    body = {"name": "shop", "webhookUrl": bot_hook, "metadata": {"team": "sales"}}
    bot = run.json(
        run.call("POST", "/api/sessions", token=alice, json=body, label="bot"),
        201,
    )
    bot_id = bot["id"]
    run.secrets.append(
        Secret("a bot's first webhook secret", bot["webhookSecret"], shown_in=("bot",))
    )
    change = {"webhookUrl": bot_hook, "metadata": {"team": "ops"}}
    patch = run.call(
        "PATCH", f"/api/sessions/{bot_id}", token=alice, header="x-api-key", json=change
    )
    assert "webhookSecret" not in run.json(patch)
    rotate = run.call("POST", f"/api/sessions/{bot_id}/webhook-secret", token=alice, label="rotate")
    rotated = run.json(rotate)["webhookSecret"]
    run.secrets.append(Secret("a bot's rotated webhook secret", rotated, shown_in=("rotate",)))

    # Linked through the simulated phone; a message out, messages in (one a chat command).
    run.wait_state(bot_id, alice, "SCAN_QR")
    run.simulate(bot_id, alice, "scan")
    run.wait_state(bot_id, alice, "CONNECTED")
    message = run.json(
        run.call(
            "POST",
            f"/api/sessions/{bot_id}/messages",
            token=alice,
            json={"to": CUSTOMER, "text": "Your order has shipped", "idempotencyKey": "order-1"},
        ),
        202,
    )
    for text in ("hello there", "!ping"):
        run.simulate(bot_id, alice, "message", **{"from": CUSTOMER, "body": text})

    def delivered() -> bool:
        got = run.json(run.call("GET", f"/api/sessions/{bot_id}/simulator/sent", token=alice))
        return {"Your order has shipped", "pong"} <= {m["body"] for m in got["messages"]}

    wait_until(delivered, WAIT, "the message and the answer to !ping to be sent")

    # The keep-alive: a ping, then the heartbeat. Against a failing peer: three failures
    # (an alert naming the target), then a recovery (a resolved notice).
    if scenario.self_ping:
        assert run.run_job("keepalive")["lastResult"]["ok"] is True
    else:
        run.receivers.peer.statuses = [503, 503, 503]
        for _ in range(3):
            assert run.run_job("keepalive")["lastResult"]["ok"] is False
        assert run.run_job("keepalive")["lastResult"]["ok"] is True
    run.run_job("health-sweep")
    run.run_job("cleanup")

    with (
        httpx.Client(base_url=run.server.base_url, timeout=20) as browser,
        httpx.Client(base_url=run.server.base_url, timeout=20) as admin_browser,
    ):
        # The dashboard: a failed sign-in, then tokens exchanged for cookies.
        _sign_in(run, browser, wrong, expect=401)
        _sign_in(run, browser, alice, expect=303)
        _sign_in(run, admin_browser, run.admin, expect=303)
        for page in ("/", f"/bots/{bot_id}", "/admin"):
            assert run.call("GET", page, client=browser).status_code in (200, 403)
            assert run.call("GET", page, client=admin_browser).status_code == 200

        # A wrong token, each way a token can come; the right one as X-Api-Key.
        for header in ("authorization", "x-api-key"):
            assert run.call("GET", "/api/me", token=wrong, header=header).status_code == 401
        assert run.call("GET", "/api/me", token=alice, header="x-api-key").status_code == 200

        # Every GET route, as the admin, the user, nobody, and with the dashboard's cookie.
        listed = run.call("GET", f"/api/sessions/{bot_id}/groups", token=run.admin)
        groups = listed.json().get("groups") if listed.status_code == 200 else None
        group_id = groups[0]["id"] if groups else "120363000000000001@g.us"
        ids = {
            "session_id": bot_id,
            "message_id": message["id"],
            "user_id": alice_id,
            "group_id": group_id,
        }
        for path in _get_routes(openapi, ids):
            run.call("GET", path, token=run.admin)
            run.call("GET", path, token=alice, header="x-api-key")
            run.call("GET", path)
            run.call("GET", path, client=browser)

    wait_until(lambda: _backed_up(run), WAIT, "the bot's profile to be backed up")
    stored = _stored(run.server.data_dir, database_url, "with the bot linked")

    # The phone unlinks: the bot turns critical and the alert goes out.
    run.simulate(bot_id, alice, "logout")
    run.run_job("health-sweep")
    wait_until(lambda: len(_alerts(run)) >= 1, WAIT, "an alert notification")

    # The user goes; their token no longer opens anything.
    assert run.call("DELETE", f"/api/users/{alice_id}", token=run.admin).status_code == 204
    assert run.call("GET", "/api/me", token=alice).status_code == 401
    for path in ("/api/users", "/api/audit", "/api/jobs", "/api/sessions", "/api/keepalive"):
        run.as_admin("GET", path)
    return stored


def _sign_in(run: Run, browser: httpx.Client, token: str, *, expect: int) -> None:
    form = run.call("GET", "/login", client=browser)
    match = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert match, form.text
    fields = {"csrf": match.group(1), "token": token}
    response = run.call("POST", "/login", client=browser, data=fields)
    assert response.status_code == expect, response.text


def _get_routes(openapi: dict[str, Any], ids: dict[str, str]) -> list[str]:
    """Every GET route of /openapi.json with its path filled in, bare and with each value of
    each enumerated query parameter. A new path parameter fails here, so that it is given a
    value rather than skipped."""
    found: list[str] = []
    for template, operations in openapi["paths"].items():
        operation = operations.get("get")
        if operation is None:
            continue
        path = template
        for name in re.findall(r"{(\w+)}", template):
            assert name in ids, f"give {{{name}}} (in {template}) a value in this test"
            path = path.replace("{" + name + "}", ids[name])
        found.append(path)
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "query":
                for value in parameter["schema"].get("enum", []):
                    found.append(f"{path}?{parameter['name']}={value}")
    assert len(found) >= 15, found
    return found


def _backed_up(run: Run) -> bool:
    return "Profile backed up to the database" in run.server.log


def _alerts(run: Run) -> list[dict[str, Any]]:
    return [r for r in run.receivers.hub.requests if r["path"].startswith("/alerts/")]


def _check_the_flow_ran(run: Run, scenario: Scenario, *, keepalive_token: str) -> None:
    """Each secret was used where it belongs, and each path that could leak it was taken."""
    hub = [r["path"] for r in run.receivers.hub.requests]
    assert "/bot-hook" in hub, hub
    assert _alerts(run), hub
    assert run.receivers.monitor.requests, "no heartbeat"
    assert run.receivers.operator.requests, "no delivery to WEBHOOK_URL"
    log = run.server.log
    if scenario.self_ping:
        assert "GET /health?token=*** HTTP/1.1" in log  # the access log saw the ping
    else:
        assert [r["path"] for r in run.receivers.peer.requests] == [
            f"/health?token={keepalive_token}"
        ] * 4
        assert "consecutive keep-alive failures" in log
        assert "RESOLVED" in log
        assert "Heartbeat push to HEARTBEAT_URL failed: HTTP 404" in log
        assert "is dead: HTTP 410" in log
    answers = {a.label: a.text for a in run.answers}
    assert "healthUrl" in answers["GET /api/keepalive"]
    for display in ("user", "bot", "rotate"):
        assert "cache-control: no-store" in answers[display].lower(), answers[display]


def _everything_seen(run: Run, scenario: Scenario) -> list[Seen]:
    seen = [Seen("a log line", line) for line in run.server.lines]
    if scenario.log_format == "json":
        parsed = 0
        for line in run.server.lines:
            with contextlib.suppress(ValueError):
                json.loads(line)
                parsed += 1
        assert parsed >= len(run.server.lines) * 0.9, "LOG_FORMAT=json did not take effect"
    seen += run.answers
    # What the server sent out: notification texts and webhook payloads (not where they went,
    # nor their signatures and credentials, which belong there).
    for receiver in run.receivers.all():
        for request in receiver.requests:
            seen.append(Seen(f"a body sent to {request['path'][:12]}…", request["body"].decode()))
    return seen


def _stored(data_dir: Path, database_url: str | None, when: str) -> list[Seen]:
    """Every file under DATA_DIR (the SQLite database and its WAL, the browser profiles), and
    every row of every table of the Postgres database."""
    stored: list[Seen] = []
    for path in sorted(data_dir.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            content = path.read_bytes()
        except FileNotFoundError:  # a browser's temporary file, gone since the listing
            continue
        stored.append(Seen(f"{path.relative_to(data_dir)} {when}", content.decode("latin-1")))
    if database_url is not None:
        stored.append(Seen(f"the Postgres database {when}", _postgres_dump(database_url)))
    return stored


def _postgres_dump(url: str) -> str:
    import asyncpg

    async def dump() -> str:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            tables = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
            )
            out = []
            for table in tables:
                name = table["tablename"]
                query = f'SELECT row_to_json(t)::text AS r FROM "{name}" t'
                out += [f"{name}: {row['r']}" for row in await conn.fetch(query)]
            return "\n".join(out)
        finally:
            await conn.close()

    return asyncio.run(dump())


# A start refused for a bad setting -------------------------------------------------------


def _bad_settings(closed_port: int) -> list[tuple[str, dict[str, str], tuple[str, ...]]]:
    """(what, the environment, its secret parts): each stops the start with status 2."""
    token, pw, path = _plain("BadTok"), _plain("BadPw"), _plain("BadPath")
    short = "Sh0rt" + secrets.token_hex(4)  # under the 16 characters a secret needs
    return [
        ("ALERT_URLS, unsupported", {"ALERT_URLS": f"typo{token}"}, (token,)),
        ("ALERT_URLS, refused", {"ALERT_URLS": f"slack://{token}/{path}"}, (token, path)),
        ("ALERT_URLS, unparseable", {"ALERT_URLS": f"json://user:{pw}@"}, (pw,)),
        ("ALERT_URLS, second entry", {"ALERT_URLS": f"json://ok.test/x,typo{token}"}, (token,)),
        ("ADMIN_TOKEN, short", {"ADMIN_TOKEN": short}, (short,)),
        ("SECRET_KEY, short", {"SECRET_KEY": short}, (short,)),
        ("SESSION_ENCRYPTION_KEY, short", {"SESSION_ENCRYPTION_KEY": short}, (short,)),
        ("WEBHOOK_SECRET, short", {"WEBHOOK_SECRET": short}, (short,)),
        ("HEARTBEAT_URL, not http", {"HEARTBEAT_URL": f"ftp://u:{pw}@h.test/{path}"}, (pw, path)),
        ("WEBHOOK_URL, not http", {"WEBHOOK_URL": f"ftp://h.test/{path}"}, (path,)),
        (
            "WEBHOOK_URL without its secret",
            {"WEBHOOK_URL": f"https://h.test/{path}?t={token}"},
            (path, token),
        ),
        (
            "KEEPALIVE_URL, not http",
            {"KEEPALIVE_URL": f"ftp://u:{pw}@h.test/health?token={token}"},
            (pw, token),
        ),
        ("DATABASE_URL, scheme", {"DATABASE_URL": f"mysql://u:{pw}@h.test/{path}"}, (pw, path)),
        (
            "DATABASE_URL, unreachable",
            {"DATABASE_URL": f"postgresql://postgres:{pw}@127.0.0.1:{closed_port}/x"},
            (pw,),
        ),
    ]


# Each way to a refusal once in a real process (the rest, the same code, in this one):
# apprise's own log of an entry it refuses, the database's error, a URL setting's error.
IN_A_PROCESS = ("ALERT_URLS, unsupported", "DATABASE_URL, unreachable", "KEEPALIVE_URL, not http")


def test_a_start_refused_for_a_bad_setting_never_echoes_a_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cases = _bad_settings(free_port())
    outputs: dict[str, str] = {}

    def in_a_process(what: str, env: dict[str, str]) -> None:
        data_dir = tmp_path / what.replace(" ", "_").replace(",", "")
        code, output = run_server_once(data_dir, {"LOG_LEVEL": "DEBUG", **env})
        assert code == 2, f"{what}: exit {code}\n{output}"
        outputs[what] = output

    with ThreadPoolExecutor(max_workers=len(IN_A_PROCESS)) as pool:
        running = [pool.submit(in_a_process, w, e) for w, e, _ in cases if w in IN_A_PROCESS]
        monkeypatch.chdir(tmp_path)  # no .env from the repository
        caplog.set_level(logging.DEBUG)
        for what, env, _ in cases:
            if what in IN_A_PROCESS:
                continue
            caplog.clear()
            with monkeypatch.context() as scoped:
                for name, value in env.items():
                    scoped.setenv(name, value)
                try:
                    settings = load_settings()
                    Alerter(settings.alert_url_list, SystemClock())
                except (ConfigError, AlertConfigError) as exc:
                    outputs[what] = f"{exc}\n{caplog.text}"
                else:
                    raise AssertionError(f"{what}: accepted")
        for future in running:
            future.result(timeout=60)

    found = []
    for what, _, parts in cases:
        assert "Invalid configuration" in outputs[what] or "Database" in outputs[what]
        found += leaks([Secret(what, parts[0], parts)], [Seen("the output", outputs[what])])
    assert not found, "Secrets echoed by a refused start:\n" + "\n".join(found)
