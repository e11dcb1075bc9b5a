"""Credential masking for the IT-support route (seed 002): what is masked and what stays readable."""

from __future__ import annotations

import pytest

from gateway.credentials import MASK, mask_credentials


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("my password is Winter2024! please reset it", "Winter2024"),
        ("I changed my password to 'correct horse battery' yesterday", "correct horse battery"),
        ("password: hunter", "hunter"),
        ("Password=abc123", "abc123"),
        ("api_key = 'k-live-9f8e7d6c'", "k-live-9f8e7d6c"),
        ("our API key is sk-proj-AbCdEfGhIjKlMnOpQrStUv123", "sk-proj-AbCdEfGhIjKlMnOpQrStUv123"),
        ("token ghp_0123456789abcdefghijABCDEFGHIJ leaked", "ghp_0123456789abcdefghijABCDEFGHIJ"),
        ("aws AKIAIOSFODNN7EXAMPLE in the script", "AKIAIOSFODNN7EXAMPLE"),
        ("curl -H 'Authorization: Bearer abc.def-123456'", "abc.def-123456"),
        ("jdbc postgres://svc:S3cr3t!@db.internal:5432/app fails", "S3cr3t!"),
        ("the PIN is 4821.", "4821"),
        ("xoxb-1234567890-abcdefghij in slack", "xoxb-1234567890-abcdefghij"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", "MIIEow"),
    ],
)
def test_credentials_are_masked(text: str, secret: str) -> None:
    masked = mask_credentials(text)
    assert secret not in masked
    assert MASK in masked


@pytest.mark.parametrize(
    "text",
    [
        "How do I reset my password?",
        "my password is expired and Outlook keeps asking",
        "The token expired, what now?",
        "Passwords must be at least 14 characters long.",
        "Open https://portal.nwl.example/reset and follow the steps.",
    ],
)
def test_ordinary_support_questions_stay_as_written(text: str) -> None:
    assert mask_credentials(text) == text


def test_masking_twice_changes_nothing_more() -> None:
    once = mask_credentials("password: hunter2 and token is Abc123xyz")
    assert mask_credentials(once) == once
    assert once == f"password: {MASK} and token is {MASK}"
