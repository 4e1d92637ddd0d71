"""Credentials in URLs: how to find them, and the one function that keeps them out of text.

A model source is written into a ModelDeployment or TrainingJob, which anyone with the built-in
`view` role reads; so a URL that carries a credential (user info, a presigned signature, a token
in the query) is refused at apply time (`kubeforge.api`), and credentials come from a Secret
instead. `redact` is still applied to every log line, status message and Event that carries a URL
(an object stored before the rule, a redirect to a presigned URL, an error that quotes one).
"""

from __future__ import annotations

import logging
import re
import urllib.parse

MASK = "***"
# a query parameter whose name ends so holds a credential: X-Amz-Signature, X-Amz-Credential,
# X-Amz-Security-Token, X-Goog-Signature, access_token, api_key, client_secret, password, ...
SENSITIVE_ENDINGS = ("signature", "credential", "token", "key", "secret", "password")
# ...and these by their whole name: Azure SAS's signature, GCS's v2 signing account
SENSITIVE_NAMES = ("sig", "googleaccessid")
# What the CRD's CEL rules test (cheap enough for the API server's cost budget: one short regex,
# and substrings of the lower-cased URL), and `credential_in_url` the same way.
USERINFO_PATTERN = "^[a-z0-9+.-]+://[^/]*@"
CREDENTIAL_MARKERS = tuple(f"{name}=" for name in (*SENSITIVE_ENDINGS, *SENSITIVE_NAMES))
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def credential_in_url(url: str) -> str | None:
    """What in `url` is a credential ("user info", "'token='"), or None."""
    if re.search(USERINFO_PATTERN, url):
        return "user info (user:password@)"
    lowered = url.lower()
    found = next((marker for marker in CREDENTIAL_MARKERS if marker in lowered), None)
    return None if found is None else f"{found!r}"


def _sensitive(name: str) -> bool:
    name = name.lower()
    return name in SENSITIVE_NAMES or name.endswith(SENSITIVE_ENDINGS)


def _redact_url(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # not even a URL's shape (an unclosed [IPv6]): keep only its scheme
        return url.partition("://")[0] + "://" + MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        pairs = [p.partition("=") for p in query.split("&")]
        query = "&".join(f"{k}{eq}{MASK}" if eq and _sensitive(k) else f"{k}{eq}{v}" for k, eq, v in pairs)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it masked: user info and the values of
    sensitive query parameters become ***."""
    return _URL.sub(lambda m: _redact_url(m.group(0)), text)


class RedactingFilter(logging.Filter):
    """Passes every log record (its message and traceback) through `redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def redact_logs() -> None:
    """Every handler of the root logger (set up by logging.basicConfig) writes redacted lines."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
