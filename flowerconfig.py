"""Flower's settings, read by `celery -A tasks flower` from the working directory.

Flower binds `HOST` (default 127.0.0.1) and always asks for a login:
`FLOWER_BASIC_AUTH`, else a password generated once and kept, readable by
its owner only, in `FLOWER_CREDENTIALS_FILE` (see devtools/credentials.py).
Flower reads this file after its FLOWER_* environment variables, so both
are honoured here; command-line options still win.
"""

import os
import sys

# Flower runs this file by itself, with the working directory no longer on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from devtools.credentials import flower_basic_auth, login_hint  # noqa: E402

address = os.environ.get("FLOWER_ADDRESS") or os.environ.get("HOST") or "127.0.0.1"
try:
    _auth, _kept_in = flower_basic_auth()
except ValueError as exc:
    print(f"flower: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
basic_auth = _auth.split(",")
print(f"flower: on {address}, login with {login_hint(_auth, _kept_in)}", file=sys.stderr, flush=True)
