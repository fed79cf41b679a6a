"""What is shown of a URL or a third-party log line: credentials masked, the rest kept."""

from __future__ import annotations

import pytest

from services.redaction import redact_secret_params, redact_url, redact_userinfo


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://bot.example.test/health", "https://bot.example.test/health"),
        (
            "https://bot.example.test/health?token=s3cr3t",
            "https://bot.example.test/health?token=***",
        ),
        ("http://u:pw@h.test:8080/health?a=1&b", "http://u:***@h.test:8080/health?a=***&b"),
        ("https://h.test/x?k=v#frag", "https://h.test/x?k=***#frag"),
        ("http://[::1/broken", "***"),
    ],
)
def test_a_url_is_shown_without_its_password_or_query_values(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_only_the_password_of_the_userinfo_is_masked() -> None:
    assert redact_userinfo("https://alice:pw@h.test/hook") == "https://alice:***@h.test/hook"
    assert redact_userinfo("https://alice@h.test/hook") == "https://alice@h.test/hook"


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        (
            '127.0.0.1:4242 - "GET /health?token=abc123 HTTP/1.1" 200',
            '127.0.0.1:4242 - "GET /health?token=*** HTTP/1.1" 200',
        ),
        ("GET /x?status=dead&api_key=k1&Sig=s2", "GET /x?status=dead&api_key=***&Sig=***"),
        ("GET /api/sessions?limit=10&offset=0", "GET /api/sessions?limit=10&offset=0"),
        ("no query here", "no query here"),
    ],
)
def test_credential_looking_query_values_are_masked_in_free_text(line: str, shown: str) -> None:
    assert redact_secret_params(line) == shown
