"""Credentials never reach MLflow: params and tags that look like secrets are dropped."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

_SECRET_KEY_WORDS = {"secret", "password", "passwd", "token", "credential", "credentials"}
_SECRET_KEY_SUBSTRINGS = ("access_key", "accesskey", "api_key", "apikey", "private_key", "secret")
_SECRET_VALUE_PATTERNS = (
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),  # Hugging Face token
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),  # GitHub token
    re.compile(r"\bsk-[A-Za-z0-9_\-]{20,}\b"),  # OpenAI-style key
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._\-]{16,}"),  # HTTP bearer token
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"[a-z][a-z0-9+.\-]*://[^/\s:@]+:[^/\s@]+@"),  # URL with user:password@
)


def is_secret(key: str, value: Any = None) -> bool:
    """Whether a param/tag looks like a credential (by key name or by value).

    Key names are split into words on non-alphanumerics, so ``hf_token`` and ``DB_PASSWORD``
    are secrets while ``max_new_tokens`` and ``tokenizer`` are not.
    """
    lowered = key.lower()
    words = set(re.split(r"[^a-z0-9]+", lowered))
    if words & _SECRET_KEY_WORDS or any(s in lowered for s in _SECRET_KEY_SUBSTRINGS):
        return True
    if value is None:
        return False
    text = str(value)
    return any(p.search(text) for p in _SECRET_VALUE_PATTERNS)


def filter_secrets(items: Mapping[str, Any] | None) -> dict[str, Any]:
    """Drop entries whose key or value looks like a credential (the key is logged, never the
    value)."""
    kept: dict[str, Any] = {}
    for key, value in (items or {}).items():
        if is_secret(str(key), value):
            logger.warning("not logging %r to MLflow: it looks like a credential", key)
            continue
        kept[str(key)] = value
    return kept


def display_uri(uri: str) -> str:
    """The URI without any ``user:password@`` part (never print credentials)."""
    return re.sub(r"//[^/@\s]*@", "//", uri)
