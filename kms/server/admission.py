"""Who keeps a connection: the cap per worker and the quota per client identity.

Two settings bound the connections of one worker:

- ``server.max_connections``: at the cap a new connection is still accepted if the worker can
  close one that is not yet a client's: one still in its TLS handshake (no identity yet), or one
  whose handshake is done but which has sent nothing yet and never completed a request. Among
  those, first the handshakes, then the connections of the identity holding the most, the oldest
  first. A connection that has completed a request (idle between requests, or closing after its
  answer), or whose request is arriving, being served or being answered, is never closed for a
  newcomer: if nothing else can go, the newcomer is closed instead.
- ``server.max_connections_per_identity``: once its handshake is done, a connection whose
  certificate's identity (its names, as the policy sees them) already holds that many of the
  worker's connections is answered 429 ``{"error": "too many connections"}`` and closed. One
  certificate, however many connections it opens, holds at most that share of the cap.
"""

from __future__ import annotations

from collections.abc import Iterable

from kms.server.connection import Connection, State

#: How often, at most, the refusals of one identity over its quota are logged.
QUOTA_LOG_INTERVAL_SECONDS = 10.0


def evictable(conn: Connection) -> bool:
    """Whether ``conn`` may be closed to make room for a newcomer."""
    if conn.state is State.HANDSHAKE:
        return True
    return conn.state is State.HEAD and conn.requests == 0 and not conn.buffer


class IdentityCounts:
    """Connections held per identity in one worker, against the per-identity quota."""

    def __init__(self, quota: int) -> None:
        self.quota = quota
        self.counts: dict[str, int] = {}
        # When each identity's refusal was last logged.
        self.logged: dict[str, float] = {}

    def admit(self, identity: str) -> bool:
        """Count one more connection for ``identity``; False (and nothing counted) if it is at
        its quota."""
        held = self.counts.get(identity, 0)
        if held >= self.quota:
            return False
        self.counts[identity] = held + 1
        return True

    def release(self, identity: str) -> None:
        held = self.counts.get(identity, 0) - 1
        if held > 0:
            self.counts[identity] = held
        else:
            self.counts.pop(identity, None)

    def refusal_to_log(self, identity: str, now: float) -> bool:
        """Whether a refusal of ``identity`` at ``now`` (monotonic) is to be logged: at most one
        per identity per ``QUOTA_LOG_INTERVAL_SECONDS``, so a refused client cannot flood the log.
        """
        last = self.logged.get(identity)
        if last is not None and now - last < QUOTA_LOG_INTERVAL_SECONDS:
            return False
        if len(self.logged) > 4 * len(self.counts) + 64:
            # Forget the identities that hold no connection, so the table stays small.
            self.logged = {name: at for name, at in self.logged.items() if name in self.counts}
        self.logged[identity] = now
        return True

    def held(self, identity: str | None) -> int:
        return 0 if identity is None else self.counts.get(identity, 0)


def choose_victim(held: Iterable[Connection], counts: IdentityCounts) -> Connection | None:
    """The connection to close for a newcomer at the cap, or None if none may be closed."""
    candidates = [conn for conn in held if evictable(conn)]
    if not candidates:
        return None
    return min(
        candidates,
        key=lambda conn: (
            conn.state is not State.HANDSHAKE,
            -counts.held(conn.identity),
            conn.since,
        ),
    )
