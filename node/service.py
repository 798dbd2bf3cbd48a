"""`opinfer node run | unbond | withdraw`: the node as a service.

run: connect to the chain (the rollup gives every other address), stake up
to --stake if the stake is short (idempotent: a restart stakes nothing
more), load the models' engines, announce endpoint and model ids in the
registry when they differ from the listing, start the defender thread and
serve the execution API until SIGTERM/SIGINT; then drain: uvicorn stops
accepting, in-flight jobs finish (up to drain_seconds), the batchers and
the defender stop. A node below the minimum stake with games open against
it (and no --stake) only defends those games, then exits (defend_until_done)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from node import engines as engine_mod
from node.chain import NodeChain, connect
from node.defender import HONEST, Defender, Strategy
from node.errors import NodeError
from node.logs import event, setup
from node.metrics import Metrics
from node.settings import NodeSettings
from node.store import Store
from opinfer.errors import OpinferError

WEI = 10**18


def eth_to_wei(eth: float | str) -> int:
    from decimal import Decimal

    return int(Decimal(str(eth)) * WEI)


def resolve_models(chain: NodeChain, refs: list[str], available: dict) -> dict[str, int]:
    """name -> on-chain id for model refs (names or ids), each with an engine here."""
    out = {}
    for ref in refs:
        model_id = chain.model_id(str(ref))
        name = chain.model(model_id).name
        if name not in available:
            raise NodeError(f"model {name!r} (id {model_id}) has no engine on this node "
                            f"(engines: {', '.join(sorted(available))})")
        out[name] = model_id
    if not out:
        raise NodeError("no models to serve: pass --model NAME_OR_ID (repeatable)")
    return out


def ensure_registered(chain: NodeChain, stake_wei: int, endpoint: str, model_ids: list[int], log) -> dict:
    """Stake up to `stake_wei` and announce (endpoint, models); a no-op when already so. Returns what it did."""
    done = {"staked_wei": 0, "announced": False}
    have, minimum = chain.stake(), chain.min_stake()
    if stake_wei and have < stake_wei:
        if stake_wei < minimum:
            raise NodeError(f"--stake {stake_wei / WEI} ETH is below the minimum stake of {minimum / WEI} ETH")
        chain.add_stake(stake_wei - have)
        done["staked_wei"] = stake_wei - have
        event(log, "staked", node=chain.address, added_wei=stake_wei - have, total_wei=stake_wei)
    elif have < minimum:
        raise NodeError(f"stake {have / WEI} ETH is below the minimum of {minimum / WEI} ETH: pass --stake ETH")
    want = (endpoint, sorted(model_ids))
    listing = chain.listing()
    if listing is None or (listing[0], sorted(listing[1])) != want:
        chain.announce(endpoint, sorted(model_ids))
        done["announced"] = True
        event(log, "announced", node=chain.address, endpoint=endpoint, model_ids=sorted(model_ids))
    return done


def load_program_engine(name: str, model_id: int, registry_root: bytes, settings: NodeSettings, log):
    """The engine of a registered model from its built program file, checked against the
    registry's model_root; NodeError (the node does not start) when there is no file or
    its root differs. Never calibrates: the engine is rebuilt from the file's integers."""
    import time

    from opinfer.errors import CommitmentError
    from opinfer.models.built import find_program, programs_dir, read_meta

    folder = settings.programs_dir or str(programs_dir())
    try:
        path = find_program(name, registry_root, settings.program_files(), folder)
    except CommitmentError as exc:
        raise NodeError(f"--program: {exc}") from None
    if path is None:
        raise NodeError(f"no built program for {name} (registry id {model_id}, model_root 0x{registry_root.hex()}) "
                        f"in --program files or {folder}: build it with `opinfer model build` and pass "
                        f"--program FILE (docs/models.md, 'Model lifecycle')")
    try:
        file_root = read_meta(path)["model_root"]
    except CommitmentError as exc:
        raise NodeError(str(exc)) from None
    if file_root != "0x" + registry_root.hex():
        raise NodeError(f"refusing to start: {path} holds {name} with model_root {file_root}, but the registry's "
                        f"model {model_id} ({name}) has model_root 0x{registry_root.hex()}; this node would sign "
                        f"results of another program (use the file built for the registered root)")
    started = time.monotonic()
    try:
        engine = engine_mod.load_file(name, path, registry_root, "full" if settings.verify_program else "digest")
    except CommitmentError as exc:
        raise NodeError(f"refusing to start: {exc}") from None
    event(log, "program loaded", model=name, model_id=model_id, file=str(path), model_root=file_root,
          verified="full" if settings.verify_program else "digest", seconds=round(time.monotonic() - started, 2))
    return engine


def process_age() -> float:
    """Seconds since this process started (Linux /proc; 0.0 elsewhere): the node logs its start-up time."""
    import time

    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(uptime - ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0


def default_state(address: str) -> str:
    return str(Path(".opinfer") / f"node-{address.lower()}.db")


def run(settings: NodeSettings, model_refs: list[str], engines: dict | None = None,
        strategy: Strategy = HONEST, node_factory=None) -> int:
    """Register, serve and defend until stopped. `engines` (name -> engine)
    replaces the real engines (tests: toy programs); `strategy` and
    `node_factory` exist for node/dishonest.py only."""
    from node.app import Node, create_app

    log = setup(settings.log_level)
    if not settings.key:
        raise NodeError("no node key: pass --key or set OPINFER_NODE_KEY")
    rpc, rollup = settings.chain()
    chain = connect(rpc, settings.key, rollup)
    if engines is None:
        try:   # --program files of models this library has no folder for (llama-family files)
            engine_mod.adopt_program_files(settings.program_files())
        except OpinferError as exc:
            raise NodeError(f"--program: {exc}") from None
    available = engines if engines is not None else engine_mod.ENGINES
    refs = model_refs or list(settings.model_ids()) or []
    model_ids = resolve_models(chain, refs, available)
    endpoint = settings.endpoint or f"http://{settings.host}:{settings.port}"
    metrics = Metrics()
    by_name = dict(engines) if engines is not None else {}
    for name in model_ids:  # load before announcing: a listed node is ready to serve
        engine = by_name.get(name) or load_program_engine(name, model_ids[name],
                                                          chain.model(model_ids[name]).model_root, settings, log)
        by_name[name] = engine
        event(log, "model loaded", model=name, model_id=model_ids[name])
    defend_only = not settings.stake_eth and chain.stake() < chain.min_stake() and chain.open_disputes() > 0
    if not defend_only:
        ensure_registered(chain, eth_to_wei(settings.stake_eth) if settings.stake_eth else 0, endpoint,
                          list(model_ids.values()), log)
    auth = settings.authenticator()
    if auth.open:
        event(log, "execution API is open to anyone: set --auth-token or --trust for a public node",
              logging.WARNING)
    factory = node_factory or Node
    node = factory(settings.key, chain.chain_id, chain.rollup.address, model_ids, settings.concurrency,
                   engines_by_name=by_name, metrics=metrics, max_batch=settings.max_batch,
                   prefill_tokens=settings.prefill_tokens or None)
    store = Store(settings.state_path or default_state(chain.address))
    start = settings.start_block if settings.start_block >= 0 else max(chain.head() - 0, 0)
    defender = Defender(chain, store, node.program, metrics, log, strategy=strategy, start_block=start)
    thread, stop = defender.start(settings.poll_interval)
    if defend_only:
        return defend_until_done(chain, thread, stop, store, settings.poll_interval, log)

    def shutdown():
        stop.set()
        thread.join(30)
        store.close()
        event(log, "node stopped", node=chain.address)

    app = create_app(node=node, auth=auth, on_shutdown=shutdown)
    event(log, "serving", node=chain.address, url=f"http://{settings.host}:{settings.port}", endpoint=endpoint,
          models=model_ids, pid=os.getpid(), startup_s=round(process_age(), 2), max_batch=node.max_batch, prefill_tokens=node.prefill_tokens,
          # continuous batching: a running stream waits at most one pass of this many rows (docs/serving.md)
          stall_bound_rows=node.max_batch + node.prefill_tokens if node.prefill_tokens else None)
    serve_until_signal(app, settings.host, settings.port, settings.drain_seconds)
    return 0


def defend_until_done(chain: NodeChain, thread, stop, store: Store, poll: float, log) -> int:
    """A node whose stake fell below the minimum (slashed, or unbonded) with games still open
    against it: it serves no jobs and announces nothing, but plays those games out, so each
    leaf is decided on its merits rather than lost on time (an honest leaf of a node slashed
    for another one stays final). Exits once none is open, or on SIGTERM/SIGINT."""
    import signal
    import threading

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    event(log, "stake below the minimum: defending the open games only (no jobs served)", logging.WARNING,
          node=chain.address, open_games=chain.open_disputes())
    while not done.wait(max(poll, 1.0)):
        try:
            if chain.open_disputes() == 0:
                break
        except Exception as exc:  # noqa: BLE001 - the chain is unreachable for a moment: ask again
            event(log, "could not read open games", logging.WARNING, error=repr(exc))
    stop.set()
    thread.join(30)
    store.close()
    event(log, "node stopped: no open games left to defend", node=chain.address)
    return 0


def serve_until_signal(app, host: str, port: int, drain_seconds: int) -> None:
    """uvicorn until SIGTERM/SIGINT, then a graceful drain; exits normally
    (uvicorn alone re-raises the signal, so a drained node would look killed)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                          timeout_graceful_shutdown=drain_seconds)).run()


def unbond(settings: NodeSettings, amount_eth: float | None = None) -> int:
    log = setup(settings.log_level)
    rpc, rollup = settings.chain()
    chain = connect(rpc, settings.key, rollup)
    if chain.listing() is not None:
        chain.retire()  # coordinators stop routing here first
        event(log, "retired from the registry", node=chain.address)
    stake = chain.stake()
    amount = eth_to_wei(amount_eth) if amount_eth else stake
    if amount <= 0:
        raise NodeError("nothing staked to unbond")
    if amount > stake:
        raise NodeError(f"--amount {amount / WEI} ETH is above the stake of {stake / WEI} ETH")
    chain.request_unbond(amount)
    total, unlock = chain.unbonding()
    event(log, "unbonding", node=chain.address, amount_wei=amount, unbonding_wei=total, unlock_at=unlock)
    print(f"unbonding {total / WEI} ETH; withdraw after unix time {unlock} (`opinfer node withdraw`)")
    return 0


def withdraw(settings: NodeSettings) -> int:
    log = setup(settings.log_level)
    rpc, rollup = settings.chain()
    chain = connect(rpc, settings.key, rollup)
    total, unlock = chain.unbonding()
    if total == 0:
        raise NodeError("nothing unbonding: run `opinfer node unbond` first")
    now = chain.timestamp()
    if now < unlock:
        raise NodeError(f"still unbonding: {unlock - now} s left (unlocks at unix time {unlock})")
    chain.withdraw()
    event(log, "withdrawn", node=chain.address, amount_wei=total)
    print(f"withdrew {total / WEI} ETH")
    return 0
