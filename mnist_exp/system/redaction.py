"""Passwords masked in any text: the net under credentials' handling of URLs, used by every line this project
prints or writes (errors.report included, which is why this module imports nothing of ours)."""

from __future__ import annotations

import re

MASK = "***"
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*:)[^\s'\"/]*(@)")
_QUERY_PASSWORD = re.compile(r"([?&](?:password|passwd|pwd)=)[^&\s'\"]*", re.IGNORECASE)


def mask(text: str) -> str:
    """`text` with the password of every URL in it (and any `password=` query value) replaced by ***."""
    return _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", _URL_PASSWORD.sub(rf"\g<1>{MASK}\g<2>", text))
