"""`opinfer coordinator run | migrate | create-key`."""

from __future__ import annotations

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
        db.upgrade(settings.database_url)
        sessions = db.session_factory(db.make_engine(settings.database_url))
        with sessions() as s, s.begin():
            row, secret = keys.create(s, args.name, time.time(), args.rpm)
        print(secret)
        return 0
    import uvicorn

    from coordinator.app import create_app

    # No per-request access log: requests are counted and timed in /metrics, and the
    # hot path stays free of a formatted log line per request.
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info", access_log=False)
    return 0
