"""The Redis URLs of the settings: what they may hold, and a check at start.

Every Redis client of the service — broker, results, cache, the worker
registry — is built from one of these URLs by `redis.Redis.from_url`, and
Celery's result backend and kombu's transport read the same URL. So one
URL form works for all of them (at the pinned redis-py, kombu and Celery):

    redis://[[user]:password@]host:port/db
    rediss://[[user]:password@]host:port/db?ssl_ca_certs=/path/ca.crt&ssl_cert_reqs=required

`ssl_cert_reqs` is `required` (the default), `optional` or `none`, in
lower case (redis-py does not read `CERT_REQUIRED`); `ssl_certfile` and
`ssl_keyfile` add a client certificate. Passwords are never printed: every
message about a URL shows it through `redacted`.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis

from common.errors import SettingsError

SSL_CERT_REQS = ("required", "optional", "none")


def redacted(url: str) -> str:
    """`url` with its password replaced by `***`, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_url(name: str, url: str) -> None:
    """Raise SettingsError, naming the variable, when a rediss:// URL's TLS options are wrong."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        if any(key.startswith("ssl_") for key in parse_qs(parts.query)):
            raise SettingsError(f"{name} has ssl_* options but is not a rediss:// URL: {redacted(url)}")
        return
    reqs = parse_qs(parts.query).get("ssl_cert_reqs", ["required"])[0]
    if reqs not in SSL_CERT_REQS:
        raise SettingsError(f"{name}: ssl_cert_reqs must be one of {', '.join(SSL_CERT_REQS)}, got {reqs!r}")


def with_cert_reqs(url: str) -> str:
    """A rediss:// URL with `ssl_cert_reqs` stated (`required` unless it says otherwise).

    redis-py verifies the server's certificate by default; Celery's result
    backend refuses a rediss:// URL without the option, and kombu's
    transport would not verify at all. Stating it makes the three agree.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss" or "ssl_cert_reqs" in parse_qs(parts.query):
        return url
    query = f"{parts.query}&ssl_cert_reqs=required" if parts.query else "ssl_cert_reqs=required"
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def verify_access(urls: dict[str, str], timeout: float = 3.0) -> None:
    """Raise SettingsError when a Redis refuses our credentials or our TLS settings.

    `urls` maps a variable's name to its URL (Redis URLs only). A server
    that does not answer is not an error here: the processes wait and
    reconnect by themselves (a Redis restarting). A wrong password, an
    unknown ACL user, a certificate that does not verify, is: it will not
    get better by retrying, so the process stops at start and says which
    variable to fix.
    """
    checked = set()
    for name, url in urls.items():
        if url in checked:  # BROKER_URL and RESULT_BACKEND default to REDIS_URL: one check
            continue
        checked.add(url)
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            client.ping()
        except redis.AuthenticationError as exc:
            raise SettingsError(f"{name}: Redis at {redacted(url)} refused the credentials ({exc}); "
                                "check the user and password in the URL") from None
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise SettingsError(f"{name}: Redis at {redacted(url)} refused access ({exc})") from None
        except (redis.ConnectionError, OSError) as exc:
            text = str(exc)
            if "CERTIFICATE_VERIFY_FAILED" in text:
                raise SettingsError(f"{name}: the TLS certificate of Redis at {redacted(url)} did not verify "
                                    f"({text}); set ssl_ca_certs in the URL to the CA that signed it") from None
            if "[SSL" in text:
                raise SettingsError(f"{name}: the TLS handshake with Redis at {redacted(url)} failed ({text}); "
                                    "is that port serving TLS?") from None
            # Not reachable now: the services wait for it and reconnect by themselves.
        finally:
            client.close()
