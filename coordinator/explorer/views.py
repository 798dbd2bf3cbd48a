"""The explorer's JSON views: jobs, batches, games, nodes, challengers, search.

Everything here is read-only. Rows come from the coordinator's database (its
jobs, leaves and batches), node health from its pool, and games, slashes and
bonds from the chain's events (events.ChainIndex). When the chain cannot be
reached, views answer from what they have and say so in `chain_error`, so
the page can show the coordinator's side with a banner instead of nothing.
"""

from __future__ import annotations

import logging
import re
import threading
import time

from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from coordinator import models as m
from coordinator.errors import ApiError, NotFound
from coordinator.explorer import games as g
from coordinator.explorer.events import ChainIndex
from opinfer.trace.tables import GAME_FIELDS

log = logging.getLogger("opinfer.coordinator.explorer")
POLL_MS = 2000                  # how often the page polls
STATUSES = (m.PENDING, m.POSTED, m.DISPUTED, m.FINAL, m.INVALID, m.REJECTED)


class ChainUnavailable(ApiError):
    status = 503


def _hex(b: bytes | None) -> str | None:
    return None if b is None else "0x" + bytes(b).hex()


def _err(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


class Explorer:
    def __init__(self, coordinator, from_block: int = 0):
        self.c = coordinator
        chain = coordinator.chain
        self.index = ChainIndex(chain.w3, chain.rollup, chain.stake_manager, from_block=from_block)
        self._params: dict | None = None
        self._params_lock = threading.Lock()

    # ------------------------------------------------------------ chain helpers

    def _refresh(self) -> str | None:
        """Bring the event index up to date; the error text when the chain cannot be read."""
        try:
            self.index.refresh()
            return None
        except Exception as exc:  # noqa: BLE001 - reported to the page, which shows a banner
            log.warning("explorer: chain read failed: %s", _err(exc))
            return _err(exc)

    def _chain_time(self) -> tuple[int | None, str | None]:
        try:
            return self.c.chain.timestamp(), None
        except Exception as exc:  # noqa: BLE001
            return None, _err(exc)

    def params(self) -> dict:
        """Deployment constants (read once)."""
        with self._params_lock:
            if self._params is None:
                try:
                    self.index.refresh(force=True)
                    game = self.index.game
                    self._params = {
                        "challenge_window": self.c.chain.rollup.functions.challenge_window().call(),
                        "clock_budget": game.functions.clock_budget().call() if game else None,
                        "arity": game.functions.arity().call() if game else None,
                        "challenge_bond_wei": str(game.functions.challenge_bond().call()) if game else None,
                        "dispute_game": game.address if game else None,
                    }
                except Exception as exc:  # noqa: BLE001
                    raise ChainUnavailable(f"the coordinator cannot read the chain: {_err(exc)}",
                                           code="chain_unavailable") from exc
            return self._params

    # ------------------------------------------------------------ config, overview

    def config(self) -> dict:
        where = self.c.settings.chain()
        out = {"object": "opinfer.explorer.config", "poll_ms": POLL_MS,
               "rpc_url": self.c.settings.explorer_rpc_url or where["rpc_url"],
               "contracts": {"ResultRollup": self.c.chain.rollup.address,
                             "ModelRegistry": self.c.chain.registry.address,
                             "StakeManager": self.c.chain.stake_manager.address, "DisputeGame": None},
               "chain_id": None, "params": None, "chain_error": None}
        try:
            out["chain_id"] = self.c.chain.chain_id
            out["params"] = self.params()
            out["contracts"]["DisputeGame"] = out["params"]["dispute_game"]
        except Exception as exc:  # noqa: BLE001
            out["chain_error"] = exc.message if isinstance(exc, ApiError) else _err(exc)
        return out

    def overview(self) -> dict:
        chain_error = self._refresh()
        now, time_error = self._chain_time()
        with self.c.sessions() as s:
            counts = dict(s.execute(select(m.Leaf.status, func.count()).where(m.Leaf.agrees)
                                    .group_by(m.Leaf.status)).all())
            jobs = s.scalar(select(func.count()).select_from(m.Job)) or 0
            batches = s.scalar(select(func.count()).select_from(m.Batch)
                               .where(m.Batch.chain_batch_id.is_not(None))) or 0
        games = self.games(limit=10, refresh=False)["data"]
        with self.index.lock:
            total_games = len(self.index.games)
            active = sum(1 for evs in self.index.games.values()
                         if not any(e["event"] in ("GameResolved", "GameVoided") for e in evs))
        return {"object": "opinfer.explorer.overview", "chain_time": now, "chain_block": self.index.cursor,
                "chain_error": chain_error or time_error, "jobs": jobs,
                "leaves": {k: counts.get(k, 0) for k in STATUSES}, "batches": batches,
                "games": {"total": total_games, "active": active},
                "recent_jobs": self.jobs(limit=10)["data"], "recent_batches": self.batches(limit=8)["data"],
                "recent_games": games}

    # ------------------------------------------------------------ jobs

    def jobs(self, limit: int = 50, node: str | None = None, status: str | None = None) -> dict:
        with self.c.sessions() as s:
            q = select(m.Job).options(selectinload(m.Job.leaves).selectinload(m.Leaf.batch))
            if node:
                q = q.where(m.Job.id.in_(select(m.Leaf.job_id).where(func.lower(m.Leaf.node) == node.lower())))
            if status:
                q = q.where(m.Job.id.in_(select(m.Leaf.job_id).where(m.Leaf.agrees, m.Leaf.status == status)))
            rows = s.scalars(q.order_by(m.Job.created_at.desc()).limit(limit)).all()
            data = []
            for job in rows:
                primary = next((leaf for leaf in job.leaves if leaf.agrees), job.leaves[0] if job.leaves else None)
                if primary is None:
                    continue
                batch = primary.batch
                posted = batch is not None and batch.chain_batch_id is not None
                data.append({"id": "0x" + job.id, "kind": job.kind, "model": job.model, "node": primary.node,
                             "status": primary.status, "created": job.created_at,
                             "batch_id": batch.chain_batch_id if posted else None,
                             "leaf_index": primary.leaf_index if posted else None,
                             "deadline": batch.deadline if posted else None, "consensus": len(job.leaves)})
        return {"object": "list", "data": data}

    def job(self, job_id: str) -> dict:
        out = self.c.service.job_view(job_id)
        chain_error = self._refresh()
        now, time_error = self._chain_time()
        out["chain_time"], out["chain_error"] = now, chain_error or time_error
        result = out.get("result") or {}
        if out.get("kind") != "embedding" and result.get("ids"):
            # People read the answer, not its token ids; the ids stay in `result` for checking.
            try:
                out["text"] = self.c.service.tokenizers.of(out["model"]).decode(list(result["ids"]),
                                                                         skip_special_tokens=True)
            except Exception:  # noqa: BLE001 - a display nicety must never break the view
                out["text"] = None
        out["games"] = []
        if out.get("batch_id") is not None:
            out["games"] = [gid for gid, evs in self._games_snapshot().items()
                            if evs[0]["event"] == "GameStarted" and evs[0]["args"]["batch_id"] == out["batch_id"]
                            and evs[0]["args"]["leaf_index"] == out["leaf_index"]]
        return out

    # ------------------------------------------------------------ batches

    def _batch_row(self, batch: m.Batch, counts: dict) -> dict:
        return {"id": batch.chain_batch_id, "state": batch.state, "root": _hex(batch.root),
                "leaf_count": batch.leaf_count, "tx_hash": _hex(batch.tx_hash), "block_number": batch.block_number,
                "deadline": batch.deadline, "posted_at": batch.posted_at, "finalized_at": batch.finalized_at,
                "counts": {k: counts.get(k, 0) for k in STATUSES}}

    def batches(self, limit: int = 50, before: int | None = None) -> dict:
        with self.c.sessions() as s:
            q = select(m.Batch).where(m.Batch.chain_batch_id.is_not(None))
            if before is not None:
                q = q.where(m.Batch.chain_batch_id < before)
            rows = s.scalars(q.order_by(m.Batch.chain_batch_id.desc()).limit(limit)).all()
            counts: dict[int, dict] = {}
            if rows:
                for pk, status, n in s.execute(select(m.Leaf.batch_pk, m.Leaf.status, func.count())
                                               .where(m.Leaf.batch_pk.in_([b.id for b in rows]))
                                               .group_by(m.Leaf.batch_pk, m.Leaf.status)):
                    counts.setdefault(pk, {})[status] = n
            data = [self._batch_row(b, counts.get(b.id, {})) for b in rows]
        now, error = self._chain_time()
        return {"object": "list", "data": data, "chain_time": now, "chain_error": error}

    def batch(self, batch_id: int) -> dict:
        chain_error = self._refresh()
        with self.c.sessions() as s:
            batch = s.scalars(select(m.Batch).where(m.Batch.chain_batch_id == batch_id)
                              .options(selectinload(m.Batch.leaves).selectinload(m.Leaf.job))).first()
            if batch is None:
                raise NotFound(f"no batch {batch_id} posted by this coordinator", param="batch_id",
                               code="batch_not_found")
            counts: dict[str, int] = {}
            for leaf in batch.leaves:
                counts[leaf.status] = counts.get(leaf.status, 0) + 1
            out = self._batch_row(batch, counts)
            out["leaves"] = [{"index": leaf.leaf_index, "job_id": "0x" + leaf.job_id, "node": leaf.node,
                              "model": leaf.job.model, "status": leaf.status} for leaf in batch.leaves]
        now, time_error = self._chain_time()
        with self.index.lock:
            events = list(self.index.batches.get(batch_id, ()))
        out.update(object="opinfer.explorer.batch", chain_time=now, chain_error=chain_error or time_error,
                   events=[{"event": e["event"], "tx": e["tx"], "time": e["time"], "args": e["args"]} for e in events],
                   games=[gid for gid, evs in self._games_snapshot().items()
                          if evs[0]["event"] == "GameStarted" and evs[0]["args"]["batch_id"] == batch_id])
        return out

    # ------------------------------------------------------------ games

    def _games_snapshot(self) -> dict[int, list[dict]]:
        with self.index.lock:
            return {gid: list(evs) for gid, evs in self.index.games.items() if evs}

    def _summary(self, gid: int, events: list[dict]) -> dict:
        start = events[0]["args"] if events[0]["event"] == "GameStarted" else {}
        end = next((e for e in events if e["event"] in ("GameResolved", "GameVoided")), None)
        if end is None:
            status = "active"
        elif end["event"] == "GameVoided":
            status = "void"
        else:
            status = "node won" if end["args"]["node_won"] else "challenger won"
        return {"id": gid, "batch_id": start.get("batch_id"), "leaf_index": start.get("leaf_index"),
                "job_id": start.get("job_id"), "node": start.get("node"), "challenger": start.get("challenger"),
                "status": status, "moves": len(events), "last_event": events[-1]["event"],
                "started": events[0]["time"], "updated": events[-1]["time"],
                "reason": end["args"].get("reason") if end is not None else None}

    def games(self, limit: int = 50, refresh: bool = True, party: str | None = None) -> dict:
        chain_error = self._refresh() if refresh else None
        rows = [self._summary(gid, evs) for gid, evs in sorted(self._games_snapshot().items(), reverse=True)]
        if party:
            rows = [r for r in rows if party.lower() in (str(r["node"]).lower(), str(r["challenger"]).lower())]
        return {"object": "list", "data": rows[:limit], "chain_error": chain_error}

    def game(self, game_id: int) -> dict:
        chain_error = self._refresh()
        events = self._games_snapshot().get(game_id)
        if events is None:
            if chain_error:
                raise ChainUnavailable(f"the coordinator cannot read the chain: {chain_error}",
                                       code="chain_unavailable")
            raise NotFound(f"no game {game_id} on chain", param="game_id", code="game_not_found")
        params = self.params()
        game = self.index.game
        try:
            raw = game.functions.games(game_id).call()
            now = self.c.chain.timestamp()
        except Exception as exc:  # noqa: BLE001
            raise ChainUnavailable(f"the coordinator cannot read the chain: {_err(exc)}",
                                   code="chain_unavailable") from exc
        state = dict(zip(GAME_FIELDS, raw))
        with self.index.lock:
            stake_by_tx = {tx: list(evs) for tx, evs in self.index.by_tx.items()
                           if any(e["event"] in ("Slashed", "BondAwarded") for e in evs)}
        out = self._summary(game_id, events)
        out.update(object="opinfer.explorer.game", chain_time=now, chain_error=None,
                   bond_wei=str(state["bond"]), num_ops=state["num_ops"], phase=g.PHASES.get(state["phase"]),
                   to_move=g.to_move(state), clocks=g.clocks(state, params["clock_budget"] or 0, now),
                   state={k: (_hex(v) if isinstance(v, bytes) else (str(v) if isinstance(v, int) and abs(v) >= 2**53
                                                                     else v))
                          for k, v in state.items()},
                   moves=g.moves(events, state), outcome=g.outcome(events, stake_by_tx))
        return out

    # ------------------------------------------------------------ nodes and challengers

    def nodes(self) -> dict:
        chain_error = self._refresh()
        names = {mi.id: mi.name for mi in self.c.catalog.served()}
        with self.c.sessions() as s:
            served = dict(s.execute(select(func.lower(m.Leaf.node), func.count()).group_by(func.lower(m.Leaf.node))).all())
            bad = dict(s.execute(select(func.lower(m.Leaf.node), func.count()).where(m.Leaf.status == m.INVALID)
                                 .group_by(func.lower(m.Leaf.node))).all())
        record: dict[str, dict] = {}
        for gid, evs in self._games_snapshot().items():
            summary = self._summary(gid, evs)
            if summary["node"]:
                r = record.setdefault(summary["node"].lower(), {"won": 0, "lost": 0, "open": 0})
                key = {"node won": "won", "challenger won": "lost", "active": "open"}.get(summary["status"])
                if key:
                    r[key] += 1
        now = time.time()
        data = []
        for n in sorted(self.c.pool.nodes.values(), key=lambda n: n.address.lower()):
            rec = record.get(n.address.lower(), {"won": 0, "lost": 0, "open": 0})
            data.append({"address": n.address, "endpoint": n.endpoint, "stake_wei": str(n.stake_wei),
                         "staked": n.staked, "in_rotation": n.in_rotation(now), "source": n.source,
                         "models": [names.get(i, str(i)) for i in sorted(n.model_ids)],
                         "latency_ms": n.latency_ms, "error_rate": n.error_rate, "last_error": n.last_error,
                         "jobs_served": served.get(n.address.lower(), 0),
                         "jobs_invalid": bad.get(n.address.lower(), 0),
                         "disputes": rec})
        return {"object": "list", "data": data, "chain_error": chain_error}

    def challengers(self) -> dict:
        chain_error = self._refresh()
        by: dict[str, dict] = {}
        for gid, evs in self._games_snapshot().items():
            summary = self._summary(gid, evs)
            if not summary["challenger"]:
                continue
            r = by.setdefault(summary["challenger"].lower(), {
                "address": summary["challenger"], "games": 0, "won": 0, "lost": 0, "open": 0, "void": 0,
                "rewards_wei": 0, "bonds_lost_wei": 0, "last_game": None, "last_active": None})
            r["games"] += 1
            r[{"challenger won": "won", "node won": "lost", "active": "open", "void": "void"}[summary["status"]]] += 1
            r["last_game"] = max(r["last_game"] or 0, gid)
            r["last_active"] = max(r["last_active"] or 0, summary["updated"])
        with self.index.lock:
            stake_events = list(self.index.stake_events)
        for e in stake_events:
            who = str(e["args"].get("challenger", "")).lower()
            if e["event"] == "BondDeposited":
                by.setdefault(who, {"address": e["args"]["challenger"], "games": 0, "won": 0, "lost": 0,
                                    "open": 0, "void": 0, "rewards_wei": 0, "bonds_lost_wei": 0,
                                    "last_game": None, "last_active": e["time"]})
            if who in by and e["event"] == "Slashed":
                by[who]["rewards_wei"] += int(e["args"]["reward"])
            elif who in by and e["event"] == "BondAwarded":
                by[who]["bonds_lost_wei"] += int(e["args"]["bond"])
        sm = self.c.chain.stake_manager.functions
        for r in by.values():
            r["rewards_wei"], r["bonds_lost_wei"] = str(r["rewards_wei"]), str(r["bonds_lost_wei"])
            try:
                r["bond_wei"] = str(sm.bond(r["address"]).call())
                r["locked_bond_wei"] = str(sm.locked_bond(r["address"]).call())
            except Exception as exc:  # noqa: BLE001
                chain_error = chain_error or _err(exc)
        return {"object": "list", "data": sorted(by.values(), key=lambda r: r["address"].lower()),
                "chain_error": chain_error}

    # ------------------------------------------------------------ search

    def search(self, q: str) -> dict:
        """Where a job id, batch id, game id ("game 3"), address or tx hash leads: {kind, id}."""
        text = q.strip().lower()
        found = None
        if re.fullmatch(r"(0x)?[0-9a-f]{32}", text):
            job_id = text.removeprefix("0x")
            with self.c.sessions() as s:
                if s.get(m.Job, job_id) is not None:
                    found = {"kind": "job", "id": "0x" + job_id}
        elif re.fullmatch(r"0x[0-9a-f]{40}", text):
            with self.c.sessions() as s:
                served = s.scalar(select(func.count()).select_from(m.Leaf).where(func.lower(m.Leaf.node) == text))
            if served or text in {a.lower() for a in self.c.pool.nodes}:
                found = {"kind": "node", "id": text}
            else:
                self._refresh()
                if any(r["challenger"] and r["challenger"].lower() == text
                       for r in (self._summary(gid, evs) for gid, evs in self._games_snapshot().items())):
                    found = {"kind": "challenger", "id": text}
        elif re.fullmatch(r"0x[0-9a-f]{64}", text):
            with self.c.sessions() as s:
                batch = s.scalars(select(m.Batch).where(m.Batch.tx_hash == bytes.fromhex(text[2:]))).first()
                if batch is not None and batch.chain_batch_id is not None:
                    found = {"kind": "batch", "id": batch.chain_batch_id}
            if found is None:
                self._refresh()
                with self.index.lock:
                    events = list(self.index.by_tx.get(text, ()))
                # a game's move before the batch it touches (a challenge also marks its leaf disputed)
                for key, kind in (("game_id", "game"), ("batch_id", "batch")):
                    found = found or next(({"kind": kind, "id": e["args"][key]} for e in events
                                           if key in e["args"]), None)
        elif match := re.fullmatch(r"(game|g|batch|b)?\s*#?\s*(\d{1,18})", text):
            kind, number = ("game" if (match.group(1) or "").startswith("g") else "batch"), int(match.group(2))
            if kind == "game":
                self._refresh()
                if number in self._games_snapshot():
                    found = {"kind": "game", "id": number}
            else:
                with self.c.sessions() as s:
                    if s.scalar(select(m.Batch.id).where(m.Batch.chain_batch_id == number)) is not None:
                        found = {"kind": "batch", "id": number}
        else:
            raise ApiError("search for a job id (32 hex digits), a batch id (a number), a game (\"game 3\"), "
                           "a node or challenger address (0x + 40 hex) or a transaction hash (0x + 64 hex)",
                           param="q", code="invalid_query")
        if found is None:
            raise NotFound(f"nothing found for {q.strip()[:80]!r}", param="q", code="not_found")
        return {"object": "opinfer.explorer.search", "query": q, **found}
