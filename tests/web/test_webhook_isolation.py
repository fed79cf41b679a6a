"""Webhooks as one user's tool against the server and against other users: addresses the
guard refuses, DNS rebinding, URLs httpx would refuse, receivers that hang, drip or fail, and
slow DNS. In-process app, real loopback receivers, a DNS server of the test's own."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.netguard import BlockedAddressError, check_url
from tests.dnsserver import DnsServer, LoopbackDnsResolver
from tests.web.appclient import running_with
from tests.web.test_messages_api import eventually
from tests.web.test_sessions_api import ADMIN, Api, assert_problem, make_settings


class HostReceiver:
    """A webhook receiver on one loopback address; records Host headers."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.hosts: list[str] = []
        hosts = self.hosts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hosts.append(self.headers["Host"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port: int = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Trap:
    """A listener that only counts who connects to it (nothing must)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.socket()
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self.sock.close()


async def deliveries(api: Api, bot: str) -> list[dict[str, Any]]:
    response = await api.client.get(f"/api/sessions/{bot}/deliveries", headers=ADMIN)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["deliveries"]
    return found


@pytest.mark.parametrize(
    "url",
    [
        "http://[::7f00:1]/hook",  # IPv4-compatible IPv6 for 127.0.0.1
        "http://[::a9fe:a9fe]/hook",  # ... for 169.254.169.254
        "http://[64:ff9b:1::7f00:1]/hook",  # local-use NAT64
        "http://192.0.0.192/hook",  # a cloud's metadata, inside 192.0.0.0/24
        "http://198.18.0.1/hook",  # benchmarking
        "http://[2001:db8::1]/hook",  # documentation
    ],
)
async def test_addresses_python_calls_global_are_refused(url: str):
    with pytest.raises(BlockedAddressError):
        await check_url(url, allow_private=False)


async def test_public_addresses_pass_the_guard():
    for url in ("http://8.8.8.8/hook", "https://[2606:4700:4700::1111]/hook"):
        await check_url(url, allow_private=False)  # literals: nothing is sent or resolved


@pytest.fixture
def rebinding_hosts() -> Iterator[tuple[HostReceiver, Trap]]:
    # The same port on two loopback addresses: 127.0.0.2 stands for "a public address" (the
    # test allows it by WEBHOOK_ALLOWED_NETWORKS), 127.0.0.1 for the internal service.
    for _ in range(20):
        receiver = HostReceiver("127.0.0.2")
        try:
            trap = Trap("127.0.0.1", receiver.port)
        except OSError:
            receiver.close()
            continue
        yield receiver, trap
        trap.close()
        receiver.close()
        return
    raise AssertionError("no port free on both 127.0.0.1 and 127.0.0.2")


async def test_dns_rebinding_never_reaches_the_second_address(
    tmp_path: Path, rebinding_hosts: tuple[HostReceiver, Trap]
):
    receiver, trap = rebinding_hosts
    # The save and the first delivery see 127.0.0.2; every lookup after that 127.0.0.1.
    with DnsServer(lambda n: "127.0.0.2" if n <= 2 else "127.0.0.1") as dns:
        settings = make_settings(
            tmp_path,
            webhook_allow_private=False,
            webhook_allowed_networks="127.0.0.2/32",
            retry_base_delay="50ms",
            retry_max_delay="100ms",
            max_retry_attempts=2,
        )
        async with running_with(settings, resolver=LoopbackDnsResolver(dns.port)) as api:
            url = f"http://hooks.rebind.test:{receiver.port}/hook"
            bot = (await api.new_session(webhookUrl=url))["id"]
            await api.wait_for(bot, "CONNECTED")

            async def settled() -> list[dict[str, Any]] | None:
                # Every delivery finished, and one lookup per delivery attempt plus the
                # save's: a delivery that looked the name up again to connect never settles.
                found = await deliveries(api, bot)
                finished = all(d["status"] in ("delivered", "dead") for d in found)
                attempts = sum(d["attempts"] for d in found)
                if len(found) >= 2 and finished and len(dns.queries) == attempts + 1:
                    return found
                return None

            found = await eventually(settled, "every delivery settled, one lookup each", 20)
            assert receiver.hosts == [f"hooks.rebind.test:{receiver.port}"]
            assert [d["status"] for d in found].count("delivered") == 1
            dead = [d for d in found if d["status"] == "dead"]
            assert dead and all("loopback" in d["lastError"] for d in dead)
    assert trap.accepted == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/a\tb",
        "http://hooks.example.com/a\nb",
        "http://hooks.ex ample.com/",
    ],
)
async def test_a_url_httpx_would_refuse_is_refused_when_saved(tmp_path: Path, url: str):
    async with running_with(make_settings(tmp_path)) as api:
        response = await api.client.post(
            "/api/sessions", json={"name": "tabbed", "webhookUrl": url}, headers=ADMIN
        )
        body = assert_problem(response, 422)
        assert [e["field"] for e in body["errors"]] == ["webhookUrl"]


class DrippingReceiver:
    """Reads a request, then answers one byte at a time, never finishing."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000:
                    if self._stop.wait(0.5):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


async def test_a_dripping_and_a_failing_receiver_do_not_delay_another_users_webhooks(
    tmp_path: Path,
):
    from sqlalchemy import insert

    from bot.webhooks import webhook_deliveries

    dripping = DrippingReceiver()
    good = HostReceiver("127.0.0.1")
    try:
        settings = make_settings(
            tmp_path,
            webhook_timeout="3s",
            retry_base_delay="100ms",
            retry_max_delay="200ms",
            max_retry_attempts=2,
            max_sessions_per_user=5,
        )
        async with running_with(settings) as api:
            alice, bob = await api.new_user("alice"), await api.new_user("bob")
            drip_url = f"http://127.0.0.1:{dripping.port}/hook"
            slow = (
                await api.new_session(alice.headers, webhookUrl=drip_url, webhookEvents=["qr"])
            )["id"]
            quiet = (await api.new_session(alice.headers, webhookEvents=["qr"]))["id"]
            fast = (
                await api.new_session(bob.headers, webhookUrl=f"http://127.0.0.1:{good.port}/hook")
            )["id"]
            await api.wait_for(fast, "CONNECTED", bob.headers)
            await eventually(lambda: good.hosts, "bob's first delivery")
            webhooks = api.app.state.webhooks
            # Alice: 30 deliveries to a receiver that drips, and 10 to a URL httpx refuses
            # (stored before such URLs were refused at save).
            for _ in range(30):
                await webhooks(api.manager.sessions[slow], "qr", {"qr": "x"})
            now = api.app.state.manager.clock.now()
            rows = [
                {
                    "id": f"dlv_poison{i:06d}",
                    "session_id": quiet,
                    "target": "bot",
                    "url": "http://hooks.example.com/a\tb",
                    "event": "qr",
                    "payload": "{}",
                    "status": "queued",
                    "attempts": 0,
                    "created_at": now,
                    "due_at": now,
                }
                for i in range(10)
            ]
            async with api.app.state.db.engine.begin() as conn:
                await conn.execute(insert(webhook_deliveries), rows)
            await eventually(lambda: dripping.connections >= 1, "the dripping receiver in use")
            for round_ in range(3):
                wanted = len(good.hosts) + 1
                started = asyncio.get_running_loop().time()
                await webhooks(api.manager.sessions[fast], "message.sent", {"round": round_})
                await eventually(lambda: len(good.hosts) >= wanted, "bob's delivery", 10)  # noqa: B023
                took = asyncio.get_running_loop().time() - started
                # A few seconds at most on a loaded machine (it was a minute before).
                assert took < 4.0, f"bob's delivery took {took:.1f}s"

            async def poisoned_dead() -> bool:
                found = await deliveries(api, quiet)
                return len(found) == 10 and all(d["status"] == "dead" for d in found)

            await eventually(poisoned_dead, "the poisoned deliveries to be dead", 20)
            dead = await deliveries(api, quiet)
            assert all(d["attempts"] == 2 for d in dead)
            assert all("InvalidURL" in d["lastError"] for d in dead)
            # At most PER_RECEIVER of alice's deliveries ever waited on the drip at once.
            assert dripping.connections <= 30
    finally:
        dripping.close()
        good.close()


async def test_hanging_lookups_of_one_user_do_not_slow_another_users_patch(tmp_path: Path):
    from services.resolver import SystemResolver

    release = threading.Event()

    def lookup(host: str, port: int, family: int, kind: int) -> list[tuple[Any, ...]]:
        if host.endswith(".hang.test"):
            release.wait(30)  # a resolver that never answers (until the test ends)
            raise socket.gaierror("no answer")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    resolver = SystemResolver(timeout=3.0, lookup=lookup)
    settings = make_settings(
        tmp_path, webhook_allow_private=False, webhook_allowed_networks="127.0.0.0/8"
    )
    try:
        async with running_with(settings, resolver=resolver) as api:
            alice, bob = await api.new_user("alice"), await api.new_user("bob")
            bot_a = (await api.new_session(alice.headers, start=False))["id"]
            bot_b = (await api.new_session(bob.headers, start=False))["id"]

            async def alice_patch(i: int) -> httpx.Response:
                return await api.client.patch(
                    f"/api/sessions/{bot_a}",
                    json={"webhookUrl": f"http://n{i}.hang.test/hook"},
                    headers=alice.headers,
                )

            hanging = [asyncio.create_task(alice_patch(i)) for i in range(12)]
            await asyncio.sleep(0.2)  # alice's lookups are under way
            started = asyncio.get_running_loop().time()
            patched = await api.client.patch(
                f"/api/sessions/{bot_b}",
                json={"metadata": {"plan": "pro"}, "webhookUrl": "http://hooks.bob.test/hook"},
                headers=bob.headers,
            )
            took = asyncio.get_running_loop().time() - started
            assert patched.status_code == 200, patched.text
            assert took < 1.0, f"bob's PATCH took {took:.2f}s"
            answers = await asyncio.gather(*hanging)
            assert all(a.status_code == 422 for a in answers)
            assert all(a.json()["errors"][0]["field"] == "webhookUrl" for a in answers)
    finally:
        release.set()
        resolver.close()


# Metadata: only what every JSON reader can read back -------------------------------------


@pytest.mark.parametrize(
    "raw_metadata",
    [
        '{"x": 1e400}',
        '{"x": "\\ud800"}',
        '{"\\udfff": 1}',
        "[" * 400 + "]" * 400,  # within the 4 KB bound, nested 400 deep
    ],
    ids=["infinite", "lone-surrogate", "surrogate-key", "deep"],
)
async def test_metadata_that_is_not_strict_json_is_refused(tmp_path: Path, raw_metadata: str):
    async with running_with(make_settings(tmp_path, max_body_bytes=65_536)) as api:
        metadata = (
            raw_metadata if raw_metadata.startswith("{") else '{"deep": ' + raw_metadata + "}"
        )
        raw = '{"name": "poison", "start": false, "metadata": ' + metadata + "}"
        created = await api.client.post(
            "/api/sessions",
            content=raw.encode(),
            headers={**ADMIN, "Content-Type": "application/json"},
        )
        body = assert_problem(created, 422)
        assert [e["field"] for e in body["errors"]] == ["metadata"]
        bot = (await api.new_session(start=False))["id"]
        patched = await api.client.patch(
            f"/api/sessions/{bot}",
            content=('{"metadata": ' + metadata + "}").encode(),
            headers={**ADMIN, "Content-Type": "application/json"},
        )
        assert [e["field"] for e in assert_problem(patched, 422)["errors"]] == ["metadata"]
        listed = await api.client.get("/api/sessions", headers=ADMIN)
        assert listed.status_code == 200


async def test_a_poisoned_row_stored_before_the_check_never_breaks_the_list(tmp_path: Path):
    async with running_with(make_settings(tmp_path)) as api:
        alice = await api.new_user("alice")
        poisoned = (await api.new_session(alice.headers, start=False))["id"]
        healthy = (await api.new_session(start=False, metadata={"plan": "pro"}))["id"]
        for value in ({"x": float("inf")}, {"x": "\ud800"}):
            await api.manager.store.save_fields(poisoned, metadata=value)
            api.manager.sessions[poisoned].record.metadata = value
            listed = await api.client.get("/api/sessions", headers=ADMIN)
            assert listed.status_code == 200, listed.text
            by_id = {s["id"]: s for s in listed.json()["sessions"]}
            assert by_id[poisoned]["metadata"] == {}
            assert by_id[healthy]["metadata"] == {"plan": "pro"}
            assert (await api.get(poisoned, alice.headers))["metadata"] == {}


def self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A certificate for `name` (and its key), made for this test only."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_the_pinned_connection_keeps_the_host_and_the_tls_server_name(tmp_path: Path):
    import ssl

    from services.netguard import AddressPolicy
    from services.pinned import PinnedTransport

    name = "hooks.tls.test"
    cert, key = self_signed(tmp_path, name)
    seen: dict[str, Any] = {}
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    def remember_sni(sock: Any, sni: str | None, ctx: Any) -> None:
        seen["sni"] = sni

    server_context.sni_callback = remember_sni

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen["host"] = [
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"host:")
        ]
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    with DnsServer(lambda n: "127.0.0.1") as dns:
        client_context = ssl.create_default_context(cafile=str(cert))
        transport = PinnedTransport(
            AddressPolicy(allowed=[ipaddress_network("127.0.0.1/32")]),
            LoopbackDnsResolver(dns.port),
            verify=client_context,
        )
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.post(f"https://{name}:{port}/hook", content=b"{}")
        assert response.status_code == 204
        assert seen == {"sni": name, "host": [f"{name}:{port}"]}
        assert dns.queries == [name]
        # A name the certificate does not cover fails verification, as without pinning.
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(transport=transport) as client:
                await client.post(f"https://other.tls.test:{port}/hook", content=b"{}")
    server.close()
    await server.wait_closed()


def ipaddress_network(cidr: str) -> Any:
    import ipaddress

    return ipaddress.ip_network(cidr)
