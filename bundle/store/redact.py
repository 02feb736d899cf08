"""Credentials out of store locations and driver messages: the one function behind every shown or logged location.

A PostgreSQL location can carry its password in several forms, and each is
redacted here: the URL's userinfo (``postgresql://svc:secret@db/state``),
query parameters (``?user=svc&password=secret``, ``sslpassword=``) and
keyword/value connection strings (``host=db password='se cret'``). Text that
holds more than a location (a driver's error message) goes through the same
function, with the store's own secrets, if it knows them, replaced wherever
they appear.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

# scheme://credentials@ : the credentials run to the last '@' before whitespace, so an unencoded '@', '/' or '?'
# in a password is still inside them (redacting a little too much beats showing part of a password)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<credentials>\S*)@")
# password=..., sslpassword=..., db_password=... as a query parameter or a keyword/value pair; quoted or not
_SECRET_PARAMETER = re.compile(
    r"(?P<key>(?<![A-Za-z0-9])(?:ssl)?passw(?:or)?d\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'?|[^&\s]*)", re.IGNORECASE
)


def redact_location(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every password replaced by ``***``: in URLs, query parameters, key/value strings and ``secrets``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = _USERINFO.sub(_masked_userinfo, text)
    return _SECRET_PARAMETER.sub(lambda m: m["key"] + MASK, text)


def _masked_userinfo(match: re.Match[str]) -> str:
    credentials = match["credentials"]
    if ":" not in credentials:
        return match[0]  # a user name alone is no secret
    user = credentials.split(":", 1)[0]
    return f"{match['scheme']}{user}:{MASK}@"
