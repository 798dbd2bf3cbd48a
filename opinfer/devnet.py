"""A local devnet: anvil, the deployed protocol with both models registered,
the coordinator (127.0.0.1:8000), N staked nodes (K of them dishonest) and a
challenger, each its own process, described in .opinfer/devnet.json so that
other processes (and people) can find it.

`opinfer devnet up` stays in the foreground (Ctrl-C or SIGTERM stops every
process it started, newest first); `--detach` runs the same supervisor in
the background and returns once the network answers; `opinfer devnet down`
stops it. The API accepts the key `sk-devnet` (and keyless requests)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from web3 import HTTPProvider, Web3

from opinfer import models as registry_models
from opinfer.chain import artifacts
from opinfer.chain.anvil import Anvil, free_port
from opinfer.chain.deploy import Deployment, ProtocolParams
from opinfer.chain.sender import TxSender
from opinfer.chain.testnet import ProtocolNet
from opinfer.errors import ChainError
from opinfer.lifetime import child_preexec, say

STATE_DIR = Path(".opinfer")
STATE_FILE = STATE_DIR / "devnet.json"
API_KEY = "sk-devnet"
# Roles of anvil's development accounts (public keys: for devnets only).
# Models and their prices (wei per 1,000 tokens) come from opinfer/models.
ROLES = ("deployer", "coordinator", "challenger", "node1", "node2", "node3")
NODE_STAKE_WEI = 2 * 10**18
# Dishonest devnet nodes run node/dishonest.py's deep-element behaviour (MiniLM
# only): one element deep in the trace is wrong, every later op recomputed, the
# wrong embedding served and signed, and the lie defended move by move, so the
# challenger's bisection narrows it on chain to that element and the one-step
# slashes the node. (False: the devnet's own liar, which never defends and
# loses on time.)
USE_NODE_DISHONEST = True
DISHONEST_BEHAVIOUR = "deep-element"


def roles(nodes: int) -> tuple[str, ...]:
    return ("deployer", "coordinator", "challenger") + tuple(f"node{i + 1}" for i in range(max(nodes, 3)))


# The context a devnet's coordinator accepts: SmolLM2's 4,096 positions need a dispute clock that
# covers their trace (docs/protocol.md "Trace building time": 150 s wall on this 2-core machine
# when quiet, 400 to 480 s with other work on both cores; a dispute also has the challenger
# building its own at the same time). The devnet's default clock, 600 s, leaves 540 s for it;
# under a shorter clock (tests use 60 to 300 s) the devnet keeps a 1,024-position context.
LONG_CONTEXT_CLOCK_S = 600
SHORT_CLOCK_CONTEXT = 1025      # prompt + max_tokens: 1,024 positions


def context_cap(clock: int) -> int | None:
    """The coordinator's context cap under a dispute clock of `clock` seconds (None: the
    models' own limits). The clock must cover building a job's trace, or an honest node
    loses on time: a short clock keeps the context it was sized for."""
    return None if clock >= LONG_CONTEXT_CLOCK_S else SHORT_CLOCK_CONTEXT


def start(port: int = 8545, window: int = 600, clock: int = LONG_CONTEXT_CLOCK_S, nodes: int = 3,
          state_file: Path = STATE_FILE, log=None) -> tuple[Anvil, Deployment, dict]:
    # The one test-network builder (opinfer.chain.testnet): anvil, the protocol, the roles' keys.
    net = ProtocolNet.start(roles(nodes), ProtocolParams(challenge_window=window, clock_budget=clock), port=port,
                            tied=True)
    anvil, w3, keys, deployment, owner = net.anvil, net.w3, net.keys, net.deployment, net.owner
    try:
        models = register_models(owner, deployment.contracts["ModelRegistry"], log=log)
        # A block every second from now on: chain time (windows, clocks) moves
        # without transactions (deployment ran with instant mining: faster).
        net.interval_mining(1)
    except Exception:
        net.stop()
        raise
    info = {
        "rpc_url": anvil.url,
        "chain_id": deployment.chain_id,
        "contracts": deployment.addresses,
        "artifacts": {name: str(artifacts.load(name).path) for name in artifacts.CONTRACTS},
        "params": deployment.to_json()["params"],
        "models": models,
        "accounts": {role: {"address": TxSender(w3, key).address, "private_key": key} for role, key in keys.items()},
        "pid": os.getpid(),
        "anvil_pid": anvil.proc.pid,
    }
    write_state(info, state_file)
    return anvil, deployment, info


def write_state(info: dict, state_file: Path = STATE_FILE) -> None:
    state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(state_file)


def register_models(owner: TxSender, registry, programs_dir=None, log=None) -> dict:
    """Register every model of the library (opinfer/models) at its spec's price and
    context, as an operator does: `opinfer model build` once (the program file is
    cached in the programs folder, $OPINFER_PROGRAMS_DIR or ~/.opinfer/programs,
    and rebuilt only when the weight package's version or our program code
    changes: opinfer/models/build.py `cached`), then `opinfer model register`'s
    register_file. Nodes and the challenger load the same files."""
    from opinfer.models.build import cached
    from opinfer.models.commands import register_file

    out = {}
    for spec in sorted(registry_models.specs(), key=lambda s: s.kind != registry_models.EMBEDDING):
        started = time.monotonic()
        built = cached(spec, programs_dir)
        if log:
            log(f"  {built.name}: program {built.path} (0x{built.model_root.hex()[:16]}.., "
                f"{time.monotonic() - started:.1f} s)")
        model_id = register_file(owner, registry, built.path, spec.price_wei, built.context)
        out[built.name] = {"id": model_id, "model_root": "0x" + built.model_root.hex(),
                           "ops_per_step": built.num_ops, "context": built.context, "program": str(built.path)}
    return out


# --------------------------------------------------------------------------- services


@dataclass
class Options:
    port: int = 8545                # anvil
    api_port: int = 8000            # coordinator
    node_port: int = 0              # first node port; 0: free ports
    window: int = 600
    clock: int = LONG_CONTEXT_CLOCK_S
    nodes: int = 3
    dishonest: int = 0
    sample_rate: float = 1.0
    batch_interval: float = 2.0
    state_dir: Path = STATE_DIR
    services: bool = True           # False: only the chain and contracts

    @property
    def state_file(self) -> Path:
        return self.state_dir / "devnet.json"


@dataclass
class Service:
    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None

    def start(self) -> "Service":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(self.cmd, env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=child_preexec())
        out.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@dataclass
class Devnet:
    opts: Options
    anvil: Anvil
    info: dict
    services: list[Service] = field(default_factory=list)

    def stop(self) -> None:
        for svc in reversed(self.services):
            svc.stop()
        self.anvil.stop()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def launch(opts: Options, log=print) -> Devnet:
    """Chain, contracts, models, and (with opts.services) every service; returns once the API answers."""
    if opts.dishonest > opts.nodes:
        raise ChainError(f"--dishonest {opts.dishonest} exceeds --nodes {opts.nodes}")
    if not _port_free(opts.port):
        raise ChainError(f"port {opts.port} is taken (another devnet? `opinfer devnet down`, or --port)")
    log("opinfer devnet: starting anvil, deploying, registering the models (their programs are built once "
        "and cached: about 20 s the first time) ...")
    anvil, deployment, info = start(opts.port, opts.window, opts.clock, opts.nodes, opts.state_file, log)
    net = Devnet(opts, anvil, info)
    try:
        if opts.services:
            _start_services(net, log)
        info["ready"] = True
        write_state(info, opts.state_file)
    except BaseException:
        net.stop()
        opts.state_file.unlink(missing_ok=True)
        raise
    return net


def _start_services(net: Devnet, log) -> None:
    opts, info = net.opts, net.info
    state = opts.state_dir.resolve()
    logs = state / "logs"
    w3 = Web3(HTTPProvider(info["rpc_url"]))
    stake, registry = (w3.eth.contract(address=info["contracts"][n], abi=artifacts.abi(n))
                       for n in ("StakeManager", "ModelRegistry"))
    models = {name: m["id"] for name, m in info["models"].items()}
    api_port = opts.api_port if _port_free(opts.api_port) else free_port()
    if api_port != opts.api_port:
        log(f"  port {opts.api_port} is taken: the coordinator listens on {api_port}")
    api_url = f"http://127.0.0.1:{api_port}"
    info.update(api_url=api_url + "/v1", api_key=API_KEY, logs=str(logs), nodes=[])
    info["explorer_url"] = api_url + "/explorer"

    # Nodes: stake, announce, serve. Dishonest nodes serve the embedding
    # model only and lie about it (see node_main); honest ones serve both,
    # loading each model on its first job (three SmolLM2 copies = 7.5 GB).
    for i in range(opts.nodes):
        role = f"node{i + 1}"
        shutil.rmtree(state / role, ignore_errors=True)   # node state of an earlier chain
        key = info["accounts"][role]["private_key"]
        dishonest = i >= opts.nodes - opts.dishonest
        port = opts.node_port + i if opts.node_port else free_port()
        url = f"http://127.0.0.1:{port}"
        served = {n: mid for n, mid in models.items() if not dishonest or registry_models.get(n).kind == "embedding"}
        sender = TxSender(w3, key)
        sender.call(stake.functions.stake_eth(), value=NODE_STAKE_WEI)
        sender.call(registry.functions.announce(url, list(served.values())))
        env = {"OPINFER_NODE_KEY": key, "OPINFER_NODE_CHAIN_ID": str(info["chain_id"]),
               "OPINFER_NODE_ROLLUP_ADDRESS": info["contracts"]["ResultRollup"], "OPINFER_NODE_RPC_URL": info["rpc_url"],
               "OPINFER_NODE_DEVNET_FILE": str(opts.state_file.resolve()), "OPINFER_NODE_ENDPOINT": url,
               "OPINFER_NODE_STATE_PATH": str(state / role / "node.db"), "OPINFER_NODE_START_BLOCK": "0",
               "OPINFER_NODE_PRELOAD": "false", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        (state / role).mkdir(parents=True, exist_ok=True)
        # Each served model's built program file (`opinfer model build`, cached): the node checks
        # its root against the registry and rebuilds its engine from it, nothing calibrated.
        flags = ["--host", "127.0.0.1", "--port", str(port)] + [a for n in served for a in ("--model", n)] + \
            [a for n in served for a in ("--program", info["models"][n]["program"])]
        cmd = (_python("node.dishonest", DISHONEST_BEHAVIOUR, *flags) if dishonest and _has_dishonest()
               else _python("opinfer.devnet", "dishonest-node", "--port", str(port)) if dishonest
               else _python("opinfer.cli", "node", "run", *flags))
        if dishonest and not _has_dishonest():
            env["OPINFER_NODE_MODELS"] = ",".join(f"{n}={m}" for n, m in served.items())
        net.services.append(Service(role, cmd, env, logs / f"{role}.log").start())
        info["nodes"].append({"role": role, "address": sender.address, "url": url, "dishonest": dishonest,
                              "models": sorted(served)})

    # Nodes load their models before they listen: the coordinator starts once
    # they answer, so that none begins out of rotation.
    _wait_healthy(net, None)
    # Coordinator: a fresh database holding the devnet key.
    db_url = f"sqlite:///{state / 'coordinator.db'}"
    for suffix in ("", "-wal", "-shm"):
        Path(str(state / "coordinator.db") + suffix).unlink(missing_ok=True)
    _create_devnet_key(db_url)
    cenv = {"OPINFER_DATABASE_URL": db_url, "OPINFER_RPC_URL": info["rpc_url"],
            "OPINFER_CHAIN_ID": str(info["chain_id"]),
            "OPINFER_ROLLUP_ADDRESS": info["contracts"]["ResultRollup"],
            "OPINFER_REGISTRY_ADDRESS": info["contracts"]["ModelRegistry"],
            "OPINFER_STAKE_MANAGER_ADDRESS": info["contracts"]["StakeManager"],
            "OPINFER_COORDINATOR_KEY": info["accounts"]["coordinator"]["private_key"],
            "OPINFER_DEVNET_FILE": str(opts.state_file.resolve()),
            "OPINFER_BATCH_INTERVAL_S": str(opts.batch_interval), "OPINFER_FINALIZE_INTERVAL_S": "2",
            "OPINFER_NODE_REFRESH_S": "3", "OPINFER_NODE_TIMEOUT_S": "120", "OPINFER_EJECT_FOR_S": "5",
            # devnet-only allowances, explicit (the defaults are the production ones): nodes on
            # 127.0.0.1, keyless requests (the devnet key still works), /metrics without a key
            "OPINFER_ALLOW_PRIVATE_ENDPOINTS": "true", "OPINFER_REQUIRE_API_KEY": "false",
            "OPINFER_PUBLIC_METRICS": "true"}
    if context_cap(opts.clock) is not None:
        cenv["OPINFER_MAX_CONTEXT_TOKENS"] = str(context_cap(opts.clock))
    net.services.append(Service("coordinator", _python("opinfer.cli", "coordinator", "run", "--host", "127.0.0.1",
                                                       "--port", str(api_port)),
                                cenv, logs / "coordinator.log").start())

    # Challenger: samples every leaf by default on a devnet; a fresh state (the chain is new).
    for path in state.glob("challenger.db*"):
        path.unlink()
    chal = info["accounts"]["challenger"]
    henv = {"OPINFER_CHALLENGER_PRIVATE_KEY": chal["private_key"], "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1"}
    net.services.append(Service("challenger", _python(
        "opinfer.cli", "challenger", "run", "--rpc", info["rpc_url"], "--rollup", info["contracts"]["ResultRollup"],
        "--sample-rate", str(opts.sample_rate), "--state", str(state / "challenger.db"), "--metrics-port", "0",
        "--poll", "1", "--bond-top-up", str(10**18),
        *[a for m in info["models"].values() for a in ("--program", m["program"])]), henv,
        logs / "challenger.log").start())
    info["challenger"] = {"address": chal["address"], "sample_rate": opts.sample_rate}
    info["services"] = {s.name: s.proc.pid for s in net.services}
    write_state(info, opts.state_file)
    _wait_healthy(net, api_url)


def _has_dishonest() -> bool:
    """node.dishonest (the node package's dishonest behaviours, which also defend their lies in games)."""
    import importlib.util

    return USE_NODE_DISHONEST and importlib.util.find_spec("node.dishonest") is not None


def _create_devnet_key(db_url: str) -> None:
    """The devnet's published key, imported through the coordinator's own CLI: the supervisor
    never writes into the coordinator's database (its schema is the coordinator's business)."""
    env = {**os.environ, "OPINFER_DATABASE_URL": db_url}
    done = subprocess.run(_python("opinfer.cli", "coordinator", "create-key", "devnet", "--rpm", "0",
                                  "--secret-stdin"), input=API_KEY + "\n", env=env, capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise ChainError(f"could not create the devnet API key: {done.stderr.strip()[-500:]}")


def _wait_healthy(net: Devnet, api_url: str | None, timeout: float = 300.0) -> None:
    """Until every node (and, given api_url, the coordinator) answers /healthz with 200."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for svc in net.services:
            if not svc.alive():
                tail = svc.log.read_text(errors="replace")[-1500:] if svc.log.exists() else ""
                raise ChainError(f"{svc.name} exited during start-up (log {svc.log}):\n{tail}")
        try:
            nodes_up = all(httpx.get(n["url"] + "/healthz", timeout=2).status_code == 200
                           for n in net.info.get("nodes", []))
            if nodes_up and (api_url is None or httpx.get(api_url + "/healthz", timeout=2).status_code == 200):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise ChainError(f"the {'coordinator at ' + api_url if api_url else 'nodes'} were not healthy within {timeout:.0f} s "
                     f"(logs in {net.opts.state_dir / 'logs'})")


def _venv_activate() -> str:
    """The activate script of the environment running this devnet (where `opinfer` lives)."""
    script = Path(sys.executable).parent / "activate"
    return str(script) if script.exists() else ".venv/bin/activate"


def explorer_url(info: dict, route: str = "") -> str:
    """The coordinator's explorer page (route: e.g. "game/3", "job/0x...")."""
    base = info["api_url"].removesuffix("/v1")
    return f"{base}/explorer" + (f"#/{route}" if route else "")


def describe(info: dict) -> str:
    lines = [f"opinfer devnet is up (chain id {info['chain_id']})",
             f"  RPC          {info['rpc_url']}"]
    if info.get("api_url"):
        lines += [f"  API          {info['api_url']}   (OpenAI-compatible; API key: {API_KEY})"]
        lines += [f"  explorer     {explorer_url(info)}   (jobs, batches, finality, dispute games, nodes)"]
    for name, address in info["contracts"].items():
        lines.append(f"  {name:<12} {address}")
    for node in info.get("nodes", []):
        tag = "  DISHONEST" if node["dishonest"] else ""
        lines.append(f"  {node['role']:<12} {node['address']} {node['url']} ({', '.join(node['models'])}){tag}")
    if info.get("challenger"):
        lines.append(f"  challenger   {info['challenger']['address']} (sample rate {info['challenger']['sample_rate']})")
    window = info["params"]["challenge_window"]
    lines.append(f"  window       {window} s; clock {info['params']['clock_budget']} s per party")
    if info.get("logs"):
        lines.append(f"  logs         {info['logs']}/")
    if info.get("api_url"):
        lines += ["", "try:",
                  f"  curl -s {info['api_url']}/chat/completions -H 'authorization: Bearer {API_KEY}' "
                  "-H 'content-type: application/json' \\",
                  f"    -d '{{\"model\": \"{registry_models.by_kind('chat')[0].name}\", \"messages\": [{{\"role\": \"user\", "
                  "\"content\": \"Say hi\"}]}'",
                  f"  source {_venv_activate()}   # once per terminal: puts `opinfer` on PATH",
                  "  opinfer chat \"Say hi\" --wait       # answer, then wait for finality and verify",
                  "  opinfer status"]
    return "\n".join(lines)


def up(port: int = 8545, window: int = 600, clock: int = LONG_CONTEXT_CLOCK_S, nodes: int = 3, dishonest: int = 0,
       detach: bool = False, api_port: int = 8000, sample_rate: float = 1.0, state_dir: str | Path = STATE_DIR,
       services: bool = True, batch_interval: float = 2.0) -> int:
    opts = Options(port=port, api_port=api_port, window=window, clock=clock, nodes=nodes, dishonest=dishonest,
                   sample_rate=sample_rate, state_dir=Path(state_dir), services=services,
                   batch_interval=batch_interval)
    if detach:
        return _detach(opts)
    stop = {"now": False}

    def handle(signum, frame):
        stop["now"] = True
        raise KeyboardInterrupt

    # SIGHUP too: a closed terminal must stop the services, not orphan them.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handle)
    try:
        net = launch(opts, log=say)
    except KeyboardInterrupt:
        say("devnet stopped")
        return 0
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.__setitem__("now", True))
    say(describe(net.info))
    say(f"state written to {opts.state_file}; Ctrl-C stops everything", flush=True)
    code = 0
    try:
        while not stop["now"]:
            if net.anvil.proc is None or net.anvil.proc.poll() is not None:
                say("anvil exited")
                code = 1
                break
            dead = [s for s in net.services if not s.alive()]
            if dead:
                say(f"{dead[0].name} exited (code {dead[0].proc.returncode}); see {dead[0].log}")
                code = 1
                break
            time.sleep(0.5)
    finally:
        say("stopping ...", flush=True)
        net.stop()
        opts.state_file.unlink(missing_ok=True)
        say("devnet stopped", flush=True)
    return code


def _detach(opts: Options) -> int:
    opts.state_dir.mkdir(parents=True, exist_ok=True)
    log_path = opts.state_dir / "devnet.log"
    cmd = _python("opinfer.cli", "devnet", "up", "--port", str(opts.port), "--api-port", str(opts.api_port),
                  "--window", str(opts.window), "--clock", str(opts.clock), "--nodes", str(opts.nodes),
                  "--dishonest", str(opts.dishonest), "--sample-rate", str(opts.sample_rate),
                  "--state-dir", str(opts.state_dir), "--batch-interval", str(opts.batch_interval))
    if not opts.services:
        cmd.append("--chain-only")
    opts.state_file.unlink(missing_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise ChainError(f"the devnet exited during start-up (code {proc.returncode}; log {log_path})")
        if opts.state_file.exists():
            try:
                info = json.loads(opts.state_file.read_text())
            except ValueError:
                info = {}
            if info.get("ready"):
                print(describe(info))
                print(f"running in the background (pid {proc.pid}, log {log_path}); `opinfer devnet down` stops it")
                return 0
        time.sleep(0.5)
    proc.terminate()
    raise ChainError(f"the devnet was not ready within 420 s (log {log_path})")


def down(state_dir: str | Path = STATE_DIR, timeout: float = 30.0) -> int:
    state_file = Path(state_dir) / "devnet.json"
    if not state_file.exists():
        raise ChainError(f"no running devnet ({state_file} not found)")
    info = json.loads(state_file.read_text())
    pid = info.get("pid")
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)        # the supervisor stops its services and anvil
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    # Whatever is left (a supervisor killed hard): stop it by its recorded pid.
    for other in [*info.get("services", {}).values(), info.get("anvil_pid"), pid]:
        if other and _alive(other):
            try:
                os.kill(other, signal.SIGTERM)
            except ProcessLookupError:
                pass
    state_file.unlink(missing_ok=True)
    print("devnet stopped")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


# --------------------------------------------------------------------------- dishonest node


def dishonest_node_main(argv: list[str]) -> int:
    """A node that lies about embeddings: it shifts one element of the
    vector, commits to that (output root, signature) and serves it. The
    coordinator's checks pass (the answer matches the root the node signed);
    only re-execution shows the lie, so the challenger disputes it. It uses
    node.dishonest when the node package provides it."""
    import argparse

    parser = argparse.ArgumentParser(prog="opinfer-dishonest-node")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    import uvicorn

    from node.app import Node, create_app
    from node.settings import NodeSettings
    from opinfer.trace.leaf import ResultLeaf
    from opinfer.trace.outputs import embedding_output, tensor_root

    class LyingNode(Node):
        def execute(self, req):
            out = super().execute(req)
            payload = out["output"]
            if "embedding" not in payload:
                return out
            vector = list(payload["embedding"])
            vector[0] += 1000
            leaf = ResultLeaf(bytes.fromhex(req.job_id[2:]), req.model_id, bytes.fromhex(out["input_root"][2:]),
                              tensor_root(embedding_output(vector)), self.address,
                              bytes.fromhex(req.input[2:])).signed(self.key, self.chain_id, self.rollup)
            return {**out, "output": {**payload, "embedding": vector},
                    "output_root": "0x" + leaf.output_root.hex(), "signature": "0x" + leaf.signature.hex()}

    settings = NodeSettings()
    chain_id, rollup = settings.domain()
    node = LyingNode(settings.key, chain_id, rollup, settings.model_ids(), settings.concurrency)
    uvicorn.run(create_app(settings, node=node), host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "dishonest-node":
        sys.exit(dishonest_node_main(sys.argv[2:]))
    sys.exit(2)
