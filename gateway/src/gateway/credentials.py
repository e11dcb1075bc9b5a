"""Masking credentials (passwords, API keys, tokens, private keys) in free text.

The IT-support chatbot route (seed 002) masks what a user typed and what the model answered before
anything is stored, logged, sent to a model or returned: people paste passwords into support chats.
The rules aim at what people and tools actually write:

- well-known token formats (OpenAI/Stripe ``sk-``, GitHub ``ghp_``/``github_pat_``, AWS ``AKIA``,
  Slack ``xox?-``, Google ``AIza``, JWTs), ``Bearer`` tokens, private key blocks, and the secret part
  of ``scheme://user:secret@host``;
- a value assigned to a credential word: ``password: x``, ``api_key=x`` (always masked);
- a value said to be one: "my password is Winter2024!" (masked when it looks like a secret: it has a
  digit, a symbol or mixed case, so "my password is expired" stays readable).
"""

from __future__ import annotations

import re

__all__ = ["MASK", "mask_credentials"]

MASK = "[REDACTED]"

_TOKENS = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)"
    r"|\b(?:sk|rk|pk)-(?:[A-Za-z0-9]{2,12}-)?[A-Za-z0-9_-]{16,}"
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}|\bgithub_pat_[A-Za-z0-9_]{20,}"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"
    r"|\bAIza[0-9A-Za-z_-]{35}"
    r"|\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}",
    re.DOTALL,
)
_BEARER = re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
_URL_SECRET = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]+:)[^\s@/]+(?=@)", re.IGNORECASE)

_WORDS = (
    r"(?:pass(?:word|wd|code|phrase)|pwd|pin|secret|client[_ -]?secret|api[_ -]?key|access[_ -]?key"
    r"|secret[_ -]?key|(?:auth|access|refresh|api)[_ -]?token|token)"
)
_QUOTED = r"\"[^\"\n]*\"|'[^'\n]*'"
_ASSIGNED = re.compile(rf"(\b{_WORDS}\s*[:=]\s*)(?:{_QUOTED}|[^\s\"']+)", re.IGNORECASE)
_SAID = re.compile(
    rf"(\b{_WORDS}\s+(?:is|was|to|will be|would be)\s+)"
    rf"(?:({_QUOTED})|([^\s\"',;]+?)(?=[.,;!?]*(?:\s|$)))",
    re.IGNORECASE,
)


def _looks_secret(value: str) -> bool:
    if len(value) < 4:
        return False
    has_digit = any(c.isdigit() for c in value)
    has_symbol = any(not c.isalnum() for c in value)
    mixed_case = any(c.isupper() for c in value[1:]) and any(c.islower() for c in value)
    return has_digit or has_symbol or mixed_case


def _assigned(match: re.Match[str]) -> str:
    return match.group(0) if match.group(0).endswith(MASK) else match.group(1) + MASK


def _said(match: re.Match[str]) -> str:
    lead, quoted, bare = match.groups()
    if quoted or (bare != MASK and _looks_secret(bare)):
        return lead + MASK
    return match.group(0)


def mask_credentials(text: str) -> str:
    """``text`` with every credential the rules recognise replaced by ``[REDACTED]``."""
    text = _TOKENS.sub(MASK, text)
    text = _BEARER.sub(rf"\g<1>{MASK}", text)
    text = _URL_SECRET.sub(rf"\g<1>{MASK}", text)
    text = _ASSIGNED.sub(_assigned, text)
    return _SAID.sub(_said, text)
