"""Who may call the endpoint, and how often: bearer-token keys and per-caller token buckets.

The HF Inference API admits a request only with `Authorization: Bearer <token>`; so does this
server when it has keys. Keys come from a file (one per line, `#` comments) and/or the
`VITGENDER_API_KEYS` environment variable; only their SHA-256 digests stay in memory, and a
presented token is hashed and compared with every digest using `hmac.compare_digest`, so
neither the keys nor the timing of a comparison reveal them. A key's id in logs and metrics is
the first 8 hex digits of its digest: enough to tell keys apart, useless to an attacker.

Everything here is framework-free, so the single-process app and the Ray Serve deployment
apply the same gate (`Gate.admit`) to every request.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from vitgender.errors import UsageError

KEYS_ENV = "VITGENDER_API_KEYS"
MIN_KEY_CHARS = 16
# RFC 6750 b64token: the characters a bearer token may hold.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# What anyone may GET without a key: health checks for load balancers, and the demo page's HTML
# and script (the page itself asks for a key before it calls the API).
OPEN_PATHS = ("/health/live", "/health/ready", "/", "/static/ranking.js")


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id(key_digest: bytes) -> str:
    return key_digest.hex()[:8]


def _keys_in(text: str, where: str) -> list[str]:
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        key = line.split("#", 1)[0].strip()
        if not key:
            continue
        if not _TOKEN.fullmatch(key):
            raise UsageError(
                where, f"line {number} is not a usable key (letters, digits and -._~+/ only, " "no spaces)"
            )
        if len(key) < MIN_KEY_CHARS:
            raise UsageError(
                where,
                f"the key on line {number} has {len(key)} characters; use at least "
                f"{MIN_KEY_CHARS} (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')",
            )
        keys.append(key)
    return keys


def read_keys(path: Path | None, environ: dict[str, str] | None = None) -> frozenset[bytes]:
    """Digests of the keys in `path` and in $VITGENDER_API_KEYS (comma- or space-separated)."""
    environ = os.environ if environ is None else environ
    keys: list[str] = []
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read key file '{path}'", getattr(exc, "strerror", None) or str(exc)) from None
        keys += _keys_in(text, f"key file '{path}'")
        if not keys:
            raise UsageError(f"key file '{path}'", "holds no key (one key per line, '#' starts a comment)")
    keys += _keys_in(environ.get(KEYS_ENV, "").replace(",", "\n").replace(" ", "\n"), f"${KEYS_ENV}")
    return frozenset(digest(k) for k in keys)


@dataclass(frozen=True)
class Caller:
    """Who a request came from: a key id, or the client address when auth is off."""

    identity: str
    key_id: str | None = None


class Rejection(Exception):
    """A request refused before it reaches the model: status, HF-shaped body, headers, metric reason."""

    def __init__(self, status: int, message: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, headers or {}


def _unauthorized(message: str, reason: str) -> Rejection:
    return Rejection(401, message, reason, {"WWW-Authenticate": 'Bearer realm="vitgender"'})


class KeyRing:
    """The set of accepted key digests; `replace` swaps it atomically (SIGHUP reload)."""

    def __init__(self, digests: frozenset[bytes]) -> None:
        self._digests = digests

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def replace(self, digests: frozenset[bytes]) -> None:
        self._digests = digests  # one reference assignment: a request sees the old set or the new one

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller for an `Authorization` header value, or a 401 `Rejection`."""
        if authorization is None:
            raise _unauthorized("Authorization header is required: send 'Authorization: Bearer <key>'", "missing")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 1024 or not _TOKEN.fullmatch(token):
            raise _unauthorized("malformed Authorization header: expected 'Bearer <key>'", "malformed")
        presented = digest(token)
        matched = False
        for known in self._digests:  # no early exit: the time taken does not depend on which key matched
            matched |= hmac.compare_digest(presented, known)
        if not matched:
            raise _unauthorized("invalid API key", "invalid")
        return Caller(identity=key_id(presented), key_id=key_id(presented))


def parse_rate(text: str) -> float:
    """'10/s', '0.5/s' or '600/min' -> requests per second."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute)\s*", text or "")
    rate = float(match.group(1)) if match else 0.0
    if not match or rate <= 0:
        raise UsageError(f"--rate-limit '{text}'", "expected requests per second or minute, e.g. 10/s or 600/min")
    return rate if match.group(2).startswith("s") else rate / 60


class RateLimiter:
    """A token bucket per caller: `rate` tokens a second, at most `burst` saved up.

    Buckets live in an LRU bounded by `max_callers`; evicting the least recently seen caller
    only forgets a bucket that has been refilling the longest, so memory stays bounded even
    when every request comes from a new address.
    """

    def __init__(
        self, rate: float, burst: float | None = None, max_callers: int = 100_000, clock=time.monotonic
    ) -> None:
        self.rate, self.burst = rate, max(1.0, burst if burst is not None else rate)
        self.max_callers, self._clock = max_callers, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, identity: str) -> None:
        """Spend one token, or raise a 429 `Rejection` whose Retry-After says when one is back."""
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.pop(identity, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            allowed = tokens >= 1
            if allowed:
                tokens -= 1
            self._buckets[identity] = (tokens, now)
            while len(self._buckets) > self.max_callers:
                self._buckets.popitem(last=False)
        if not allowed:
            raise Rejection(
                429,
                f"rate limit exceeded: {self.rate:g} requests per second per caller",
                "rate_limited",
                {"Retry-After": str(max(1, math.ceil((1 - tokens) / self.rate)))},
            )


@dataclass
class Gate:
    """Auth then rate limit, applied to every path but the health checks (and /metrics if public)."""

    keys: KeyRing
    limiter: RateLimiter | None = None
    public_metrics: bool = False

    def admit(self, method: str, path: str, authorization: str | None, client: str | None) -> Caller:
        if method in ("GET", "HEAD") and (path in OPEN_PATHS or (self.public_metrics and path == "/metrics")):
            return Caller(identity=client or "-")
        caller = self.keys.authenticate(authorization) if self.keys.enabled else Caller(identity=client or "-")
        if self.limiter is not None and path != "/metrics":
            self.limiter.take(caller.identity)
        return caller
