"""The node as a real process (`opinfer node run` with the toy model):
stakes and announces on first start and does nothing more on a restart;
authenticated execution over HTTP; SIGKILL mid-game, restart on the same
state file, still wins the game in time (never slashed); SIGTERM drains an
in-flight job; `opinfer node unbond` / `withdraw` through the CLI."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from node.auth import sign_request
from node.store import WON
from opinfer.chain.anvil import free_port
from opinfer.errors import ChainError
from opinfer.trace import player
from opinfer.trace.testing import toy_job
from tests.node.kit import POSTED, Griefer, Net, leaf_from

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("run_node.py")
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def net():
    n = Net.start()
    yield n
    n.stop()


class Proc:
    def __init__(self, net, role, state: Path, log: Path, port: int, delay: float = 0.0, extra=()):
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "NODE_TEST_DELAY": str(delay), "OPINFER_NODE_KEY": net.keys[role],
               "OPINFER_NODE_AUTH_TOKEN": TOKEN}
        args = [sys.executable, str(RUNNER), "--model", "toy-dot", "--rpc", net.anvil.url, "--rollup", net.rollup,
                "--port", str(port), "--stake", "2", "--state", str(state), "--poll", "0.2", "--start-block", "0",
                "--trust", net.addr["coordinator"], "--drain-seconds", "20", *extra]
        self.log = open(log, "a")
        self.p = subprocess.Popen(args, env=env, cwd=REPO, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.p.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"node did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)

    def execute(self, net, seed, job_id, headers=None):
        job = toy_job(seed)
        body = {"job_id": "0x" + job_id.to_bytes(16, "big").hex(), "model": "toy-dot", "model_id": net.model_id,
                "input": "0x" + job.to_bytes().hex()}
        return httpx.post(self.url + "/v1/execute", json=body,
                          headers={"authorization": f"Bearer {TOKEN}"} if headers is None else headers, timeout=30)

    def kill(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)
        self.log.close()

    def stop(self):
        self.p.terminate()
        code = self.p.wait(30)
        self.log.close()
        return code


def wait(predicate, timeout=60.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError("timed out waiting")


def test_registers_serves_authenticated_and_survives_a_kill_mid_game(net, tmp_path):
    role, state, log, port = "n1", tmp_path / "node.db", tmp_path / "node.log", free_port()
    sm, reg = net.c["StakeManager"].functions, net.c["ModelRegistry"].functions
    proc = Proc(net, role, state, log, port)
    assert sm.stake(net.addr[role]).call() == 2 * 10**18
    endpoint, model_ids, staked = reg.get_node(net.addr[role]).call()
    assert (endpoint, list(model_ids), staked) == (proc.url, [net.model_id], True)

    # authentication: none -> 401, wrong token -> 401, token -> 200, signed by the trusted coordinator -> 200
    assert proc.execute(net, 1, 1, headers={}).status_code == 401
    assert proc.execute(net, 1, 1, headers={"authorization": "Bearer nope"}).status_code == 401
    job = toy_job(2)
    body = (b'{"job_id": "0x' + (2).to_bytes(16, "big").hex().encode() + b'", "model": "toy-dot", "model_id": '
            + str(net.model_id).encode() + b', "input": "0x' + job.to_bytes().hex().encode() + b'"}')
    signed = httpx.post(proc.url + "/v1/execute", content=body, timeout=30, headers={
        "content-type": "application/json", **sign_request(net.keys["coordinator"], body, net.addr[role])})
    assert signed.status_code == 200, signed.text
    stranger = httpx.post(proc.url + "/v1/execute", content=body, timeout=30, headers={
        "content-type": "application/json", **sign_request(net.keys["griefer"], body, net.addr[role])})
    assert stranger.status_code == 403
    bad = proc.execute(net, 1, 1, headers={"authorization": f"Bearer {TOKEN}"})
    assert bad.status_code == 200
    wrong_model = httpx.post(proc.url + "/v1/execute", json={"job_id": "0x" + "00" * 16, "model": "toy-dot",
                                                             "model_id": 99, "input": "0x00"},
                             headers={"authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert wrong_model.status_code == 400 and "does not serve" in wrong_model.json()["error"]["message"]

    answers = [proc.execute(net, s, 10 + s) for s in range(3)]
    assert all(a.status_code == 200 for a in answers)
    leaves = [leaf_from(a.json(), toy_job(s).to_bytes()) for s, a in zip(range(3), answers)]
    batch_id = net.post(leaves)
    griefer = Griefer(net)
    gid = griefer.challenge(leaves, batch_id, 1)

    # the node answers; kill it after its second move, on the challenger's turn
    moves = lambda: len(net.c["DisputeGame"].events.Bisected().get_logs(  # noqa: E731
        from_block=0, argument_filters={"game_id": gid}))
    wait(lambda: griefer.state(gid)["phase"] not in player.NODE_PHASES and griefer.respond(gid) is not None
         and moves() >= 1)
    wait(lambda: griefer.state(gid)["phase"] not in player.NODE_PHASES)
    proc.kill()
    griefer.respond(gid)  # the challenger moves while the node is down
    net.time_travel(30)
    stake_before = sm.stake(net.addr[role]).call()

    # restart: no second stake or announce, the game resumes and is won in time
    proc = Proc(net, role, state, log, port)
    deadline = time.monotonic() + 90
    while griefer.state(gid)["status"] == player.ACTIVE and time.monotonic() < deadline:
        try:
            griefer.respond(gid)
        except ChainError:  # the node ended the game (it runs the one-step itself) in between
            pass
        time.sleep(0.1)
    g = griefer.state(gid)
    assert g["status"] == player.NODE_WON and g["node_clock"] > net.params.clock_budget // 2
    assert sm.stake(net.addr[role]).call() == stake_before == 2 * 10**18
    assert net.slashable(role) == 2 * 10**18 and net.leaf_status(batch_id, 1) == POSTED
    wait(lambda: b'outcome="won"' in httpx.get(proc.url + "/metrics").content)
    text = httpx.get(proc.url + "/metrics").text
    for name in ("jobs_total", "job_seconds", "batch_size", "games_total", "moves_total", "auth_failures_total"):
        assert f"opinfer_node_{name}" in text
    assert proc.stop() == 0
    import sqlite3

    with sqlite3.connect(state) as db:
        assert db.execute("SELECT outcome FROM games WHERE game_id = ?", (gid,)).fetchall() == [(WON,)]
    text = log.read_text()
    assert text.count('"msg": "staked"') == 1 and text.count('"msg": "announced"') == 1
    assert '"msg": "game over"' in text


def test_sigterm_drains_in_flight_jobs_and_the_cli_unbonds_and_withdraws(net, tmp_path):
    role, port = "n2", free_port()
    proc = Proc(net, role, tmp_path / "n2.db", tmp_path / "n2.log", port, delay=1.5)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", proc.execute(net, 5, 500)))
    t.start()
    wait(lambda: b"opinfer_node_inflight 1.0" in httpx.get(proc.url + "/metrics").content, timeout=10)
    assert proc.stop() == 0  # SIGTERM while the job runs
    t.join(10)
    assert result["r"].status_code == 200 and result["r"].json()["signature"]

    env = {**os.environ, "PYTHONPATH": str(REPO), "OPINFER_NODE_KEY": net.keys[role]}
    cli = [sys.executable, "-m", "opinfer.cli", "node"]
    chain = ["--rpc", net.anvil.url, "--rollup", net.rollup]
    early = subprocess.run(cli + ["withdraw", *chain], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert early.returncode == 2 and "nothing unbonding" in early.stderr
    out = subprocess.run(cli + ["unbond", *chain], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    sm = net.c["StakeManager"].functions
    assert sm.stake(net.addr[role]).call() == 0 and sm.unbonding(net.addr[role]).call() == 2 * 10**18
    assert net.c["ModelRegistry"].functions.node_count().call() == 1  # retired: only n1 is listed
    early = subprocess.run(cli + ["withdraw", *chain], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert early.returncode == 2 and "still unbonding" in early.stderr
    net.time_travel(net.params.delay() + 1)
    before = net.w3.eth.get_balance(net.addr[role])
    out = subprocess.run(cli + ["withdraw", *chain], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert net.w3.eth.get_balance(net.addr[role]) > before + 2 * 10**18 - 10**16


def test_a_node_below_the_minimum_stake_with_a_game_open_defends_it_and_exits(net, tmp_path):
    """A node whose stake fell below the minimum (slashed for another leaf, or unbonded) while a
    game over one of its leaves is open: `opinfer node run` without --stake used to refuse to
    start, so the game was lost on time and an honest leaf made invalid. Now it serves nothing,
    plays the game out on its merits, and exits when no game is open."""
    role, state, log, port = "n3", tmp_path / "n3.db", tmp_path / "n3.log", free_port()
    proc = Proc(net, role, state, log, port)
    answers = [proc.execute(net, s, 300 + s) for s in range(2)]
    leaves = [leaf_from(a.json(), toy_job(s).to_bytes()) for s, a in zip(range(2), answers)]
    batch_id = net.post(leaves)
    assert proc.stop() == 0
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPINFER_NODE_KEY": net.keys[role]}
    out = subprocess.run([sys.executable, "-m", "opinfer.cli", "node", "unbond", "--rpc", net.anvil.url,
                          "--rollup", net.rollup], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    sm = net.c["StakeManager"].functions
    assert sm.stake(net.addr[role]).call() == 0 and net.slashable(role) == 2 * 10**18
    griefer = Griefer(net)
    gid = griefer.challenge(leaves, batch_id, 0)    # an honest leaf of a node with no active stake

    args = [sys.executable, str(RUNNER), "--model", "toy-dot", "--rpc", net.anvil.url, "--rollup", net.rollup,
            "--port", str(port), "--state", str(state), "--poll", "0.2", "--start-block", "0"]
    with open(log, "a") as out_log:
        p = subprocess.Popen(args, env={**env, "OPINFER_NODE_AUTH_TOKEN": TOKEN}, cwd=REPO, stdout=out_log,
                             stderr=out_log)
        try:
            deadline = time.monotonic() + 120
            while griefer.state(gid)["status"] == player.ACTIVE and time.monotonic() < deadline:
                assert p.poll() is None, log.read_text()[-2000:]
                try:
                    griefer.respond(gid)
                except ChainError:   # the node ended the game in between
                    pass
                time.sleep(0.1)
            assert p.wait(30) == 0, log.read_text()[-2000:]
        finally:
            if p.poll() is None:
                p.kill()
    g = griefer.state(gid)
    assert g["status"] == player.NODE_WON and g["node_clock"] > net.params.clock_budget // 2, g
    assert net.slashable(role) == 2 * 10**18 and net.leaf_status(batch_id, 0) == POSTED
    text = log.read_text()
    assert "defending the open games only" in text and "no open games left to defend" in text
    with pytest.raises(httpx.HTTPError):     # it served no jobs
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
