"""Flower's login: `FLOWER_BASIC_AUTH` when set, else one generated once and kept private.

Flower shows every job and can revoke tasks and shut workers down, so it
never runs without credentials (Flower's advisory after CVE-2022-30034).
When `FLOWER_BASIC_AUTH` (`user:password[,user2:password2]`, Flower's own
setting) is unset, a password is generated on first use and kept in
`FLOWER_CREDENTIALS_FILE` (default `.run/flower-credentials`), readable by
its owner only; later runs reuse it, so a bookmarked login keeps working.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

DEFAULT_FILE = os.path.join(".run", "flower-credentials")
USER = "admin"


def credentials_file(env=os.environ) -> Path:
    return Path(env.get("FLOWER_CREDENTIALS_FILE") or DEFAULT_FILE)


def flower_basic_auth(env=os.environ) -> tuple[str, Path | None]:
    """(`user:password` pairs for Flower, the file they were kept in, or None when they came from the environment)."""
    given = (env.get("FLOWER_BASIC_AUTH") or "").strip()
    if given:
        pairs = [p for p in given.split(",") if p.strip()]
        if not pairs or not all(":" in p and p.split(":", 1)[0] and p.split(":", 1)[1] for p in pairs):
            raise ValueError("FLOWER_BASIC_AUTH must be user:password pairs, comma-separated (e.g. admin:s3cret)")
        return given, None
    path = credentials_file(env)
    try:
        kept = path.read_text().strip()
    except FileNotFoundError:
        kept = ""
    if kept:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)  # someone widened it: narrow it again before using it
        return kept, path
    path.parent.mkdir(parents=True, exist_ok=True)
    value = f"{USER}:{secrets.token_urlsafe(18)}"
    # Created readable by its owner only, never for a moment wider.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    return value, path


def login_hint(value: str, path: Path | None) -> str:
    """How to log in, without printing the password itself to a log."""
    user = value.split(",")[0].split(":", 1)[0]
    if path is None:
        return f"user {user!r}, the password in FLOWER_BASIC_AUTH"
    return f"user {user!r}, password: cat {path}"
