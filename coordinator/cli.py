"""`opinfer coordinator run | migrate | create-key`."""

from __future__ import annotations

import sys
import time


def main(args) -> int:
    from coordinator import db, keys
    from coordinator.settings import Settings

    settings = Settings()
    if args.action == "migrate":
        db.upgrade(settings.database_url)
        print(f"database at head: {settings.database_url}")
        return 0
    if args.action == "create-key":
        given = None
        if args.secret_stdin:
            # stdin, not an argument: a secret on a command line is visible to every local user in ps
            given = sys.stdin.readline().strip()
        db.upgrade(settings.database_url)
        sessions = db.session_factory(db.make_engine(settings.database_url))
        try:
            with sessions() as s, s.begin():
                row, secret = keys.create(s, args.name, time.time(), args.rpm, secret=given)
        except ValueError as exc:
            print(f"opinfer coordinator create-key: {exc}", file=sys.stderr)
            return 2
        if given is None:
            print(secret)
        else:
            print(f"imported API key {row.prefix}... as {args.name!r}")
        return 0
    import uvicorn

    from coordinator.app import create_app

    # No per-request access log: requests are counted and timed in /metrics, and the
    # hot path stays free of a formatted log line per request.
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info", access_log=False)
    return 0
