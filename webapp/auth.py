"""Who may call what: bearer tokens, the loopback rule for admin, JSON-only POSTs.

- Inference (`/predict`, `/jobs*`): open, or with API_TOKENS set, a bearer
  token that is one of them or ADMIN_TOKEN (401 otherwise).
- Admin (`/models/load|unload|switch`, `/models/<id>/placement`): with ADMIN_TOKEN set, that token
  (an inference token alone is 403, none or an unknown one 401); without it,
  only requests from loopback (403 otherwise), as TorchServe keeps model
  management off unless asked.
- Every POST and PUT carries `Content-Type: application/json` (415 otherwise): a
  text/plain body is what any web page may post cross-site without a
  preflight.
- Everything else (health, metrics, docs, GET /models, GET /workers) is open.

Tokens are compared as SHA-256 digests with hmac.compare_digest against
every configured token, so neither the time taken nor its length tells
which token (if any) matched. No token is ever put in a message or a log.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from flask import Flask, current_app, g, request

from common.errors import Forbidden, Unauthorized, UnsupportedMediaType
from common.settings import Settings

# Roles a presented token may have.
ADMIN = "admin"
INFERENCE = "inference"

# Blueprints (webapp/views) and the rule each follows; unlisted ones are open.
GUARDED_BLUEPRINTS = {"predict": INFERENCE, "admin": ADMIN}



def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Tokens:
    """The configured tokens, as digests; tells a presented token's role."""

    def __init__(self, api_tokens: tuple[str, ...], admin_token: str):
        self._api = [digest(t) for t in api_tokens]
        self._admin = digest(admin_token) if admin_token else None

    @property
    def inference_guarded(self) -> bool:
        return bool(self._api)

    @property
    def admin_guarded(self) -> bool:
        return self._admin is not None

    def role_of(self, presented: str | None) -> str | None:
        """ADMIN, INFERENCE or None; compared with every token, no early exit on a match."""
        if not presented:
            return None
        given = digest(presented)
        is_admin = self._admin is not None and hmac.compare_digest(given, self._admin)
        is_api = False
        for known in self._api:
            is_api |= hmac.compare_digest(given, known)
        if is_admin:
            return ADMIN
        return INFERENCE if is_api else None


def from_loopback(remote_addr: str | None) -> bool:
    """Is the TCP peer on this machine (127.0.0.0/8, ::1, or 127.x mapped into IPv6)?

    Only the socket's peer counts: X-Forwarded-For and the like are never
    read. Behind a proxy on this host every request looks local, so set
    ADMIN_TOKEN there.
    """
    try:
        addr = ipaddress.ip_address((remote_addr or "").split("%")[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def presented_token() -> str | None:
    """The token of `Authorization: Bearer <token>`, or None."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def caller() -> tuple[str | None, bytes | None]:
    """(role, digest of the token) of this request's valid token, or (None, None); computed once."""
    if "atf_caller" not in g:
        token = presented_token()
        role = _tokens().role_of(token)
        g.atf_caller = (role, digest(token) if role else None)  # only a known token's digest is kept
    return g.atf_caller


def _challenge(realm: str) -> str:
    # RFC 6750: say why when a token was sent and refused.
    return f'Bearer realm="{realm}"' + (', error="invalid_token"' if presented_token() else "")


def require_inference() -> None:
    """401 unless API_TOKENS is unset or the request carries one of them (or ADMIN_TOKEN)."""
    if not _tokens().inference_guarded:
        return
    if caller()[0] is None:
        raise Unauthorized("this endpoint needs the header `Authorization: Bearer <token>` "
                           "with one of the tokens of API_TOKENS", www_authenticate=_challenge("inference"))


def require_admin() -> None:
    """ADMIN_TOKEN set: that token, else 403 (an inference token) or 401; unset: loopback only (403)."""
    if not _tokens().admin_guarded:
        if from_loopback(request.remote_addr):
            return
        raise Forbidden("model management answers only requests from this machine while ADMIN_TOKEN is unset; "
                        "set ADMIN_TOKEN on the webapp and send `Authorization: Bearer <ADMIN_TOKEN>`")
    role = caller()[0]
    if role == ADMIN:
        return
    if role == INFERENCE:
        raise Forbidden("this token may call the inference endpoints only; model management needs ADMIN_TOKEN")
    raise Unauthorized("model management needs the header `Authorization: Bearer <ADMIN_TOKEN>`",
                       www_authenticate=_challenge("admin"))


def require_json() -> None:
    """415 unless the body is declared JSON: application/json or application/<something>+json."""
    mimetype = request.mimetype  # lower case, without parameters such as charset
    if mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json")):
        return
    shown = f"got {mimetype[:100]!r}" if mimetype else "none was sent"
    raise UnsupportedMediaType(f"send the body with `Content-Type: application/json` ({shown})")


_RULES = {INFERENCE: require_inference, ADMIN: require_admin}


def check_request() -> None:
    """Before every view: the blueprint's access rule, then the body's media type."""
    rule = GUARDED_BLUEPRINTS.get(request.blueprint or "")
    if rule is not None and request.method != "OPTIONS":  # OPTIONS only lists the allowed methods
        _RULES[rule]()
    if request.method in ("POST", "PUT") and request.url_rule is not None:  # an unknown route stays 404/405
        require_json()


def _tokens() -> Tokens:
    return current_app.extensions["atf_tokens"]


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions["atf_tokens"] = Tokens(settings.api_tokens, settings.admin_token)
    app.before_request(check_request)
