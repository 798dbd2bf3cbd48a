"""Restart safety, with the challenger as a real process: SIGKILL it
mid-scan and mid-game, restart it on the same state file; it misses no
batch (including those posted while it was down), checks every leaf once,
and still wins its game inside the clock. Also `--once` through the
`opinfer` CLI, and GET /metrics of a running service."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from opinfer.chain.anvil import free_port
from opinfer.trace import player
from tests.challenger.chainkit import Defender, Net

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("run_challenger.py")


@pytest.fixture(scope="module")
def net():
    n = Net.start()
    yield n
    n.stop()


class Proc:
    def __init__(self, net, state: Path, log: Path, delay: float = 0.0, start_block: int = 0, port: int = 0):
        env = {**os.environ, "PYTHONPATH": str(REPO), "CHALLENGER_TEST_DELAY": str(delay),
               "OPINFER_CHALLENGER_PRIVATE_KEY": net.keys["challenger"]}
        args = [sys.executable, str(RUNNER), "--rpc", net.anvil.url, "--rollup", net.rollup, "--state", str(state),
                "--sample-rate", "1", "--poll", "0.2", "--bond-top-up", str(10**18), "--start-block",
                str(start_block), "--metrics-port", str(port)]
        self.log = open(log, "a")
        self.p = subprocess.Popen(args, env=env, cwd=REPO, stdout=self.log, stderr=self.log)

    def kill(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)
        self.log.close()

    def stop(self):
        self.p.terminate()  # SIGTERM: the service ends its pass and exits 0
        assert self.p.wait(20) == 0
        self.log.close()


def q(state: Path, sql: str) -> list:
    if not state.exists():
        return []
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
        try:
            return db.execute(sql).fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return []


def wait(predicate, timeout=60.0, step=0.05, defend=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if defend:
            defend()
        if predicate():
            return
        time.sleep(step)
    raise AssertionError("timed out waiting")


def test_killed_mid_scan_and_mid_game_it_misses_nothing_and_wins(net, tmp_path):
    state, log = tmp_path / "c.db", tmp_path / "challenger.log"
    start = net.w3.eth.block_number + 1
    batches = [net.post([net.leaf("honest", 100 + 2 * i), net.leaf("honest", 101 + 2 * i)]) for i in range(10)]
    batches.append(net.post([net.leaf("honest", 130), net.leaf("cheat4", 131, lie=True)]))
    done = lambda: {r[0] for r in q(state, "SELECT batch_id FROM batches WHERE status = 'done'")}  # noqa: E731

    # 1. kill mid-scan: some batches handled, the cursor not yet past the range
    proc = Proc(net, state, log, delay=0.15, start_block=start)
    wait(lambda: len(done()) >= 3)
    proc.kill()
    assert 3 <= len(done()) < len(batches), "the kill should land mid-scan"
    assert q(state, "SELECT value FROM meta WHERE key = 'cursor'") == []

    # 2. restart: every batch handled, every leaf checked exactly once, the lie disputed
    port = free_port()
    proc = Proc(net, state, log, start_block=start, port=port)
    wait(lambda: q(state, "SELECT status FROM disputes") == [("open",)])
    assert done() == set(batches)
    assert q(state, "SELECT COUNT(*), COUNT(DISTINCT batch_id || ':' || leaf_index) FROM checks") == [(22, 22)]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for name in ("batches_seen_total", "leaves_checked_total", "disputes_opened_total", "disputes_won_total",
                 "disputes_lost_total", "lag_blocks"):
        assert f"opinfer_challenger_{name}" in text

    # 3. kill mid-game, on the node's turn after the challenger's first pick
    (gid,) = [r[0] for r in q(state, "SELECT game_id FROM disputes")]
    node = Defender(net, "cheat4")
    game = net.c["DisputeGame"].functions
    wait(lambda: player.game_state(game.games(gid).call())["phase"] in player.NODE_PHASES
         and net.c["DisputeGame"].events.Picked().get_logs(from_block=start, argument_filters={"game_id": gid}),
         defend=node.respond)
    proc.kill()
    # The node moves while the challenger is down; its answers wait in the logs. One
    # node move can hand the turn back to the node (open -> tensor, tensor -> chunk),
    # so it moves until the turn is the challenger's.
    for _ in range(4):
        if player.game_state(game.games(gid).call())["phase"] not in player.NODE_PHASES:
            break
        assert node.respond() == 1
    assert player.game_state(game.games(gid).call())["phase"] not in player.NODE_PHASES
    late = [net.post([net.leaf("honest", 140 + i)]) for i in range(3)]  # posted while it is down
    net.time_travel(30)

    # 4. restart: it finds what the node revealed, finishes the game in time, handles the late batches
    proc = Proc(net, state, log, start_block=start)
    wait(lambda: q(state, "SELECT status FROM disputes") == [("won",)], defend=node.respond)
    wait(lambda: set(late) <= done())
    proc.stop()
    g = player.game_state(game.games(gid).call())
    assert g["status"] == player.CHALLENGER_WON and g["challenger_clock"] > net.params.clock_budget // 2
    assert net.c["StakeManager"].functions.slashable(net.addr["cheat4"]).call() == 0
    assert q(state, "SELECT COUNT(*) FROM checks") == [(25,)]
    assert "dispute opened" in log.read_text() and '"level": "error"' not in log.read_text()


def test_once_runs_a_single_pass_through_the_cli(net, tmp_path):
    state = tmp_path / "once.db"
    start = net.w3.eth.block_number + 1
    net.post([net.leaf("honest", 200)])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPINFER_CHALLENGER_PRIVATE_KEY": net.keys["challenger"]}
    out = subprocess.run([sys.executable, "-m", "opinfer.cli", "challenger", "run", "--once", "--rpc", net.anvil.url,
                          "--rollup", net.rollup, "--state", str(state), "--start-block", str(start),
                          "--sample-rate", "0"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert q(state, "SELECT value FROM meta WHERE key = 'cursor'") == [(str(net.w3.eth.block_number),)]
    assert q(state, "SELECT status FROM batches") == [("done",)]
    assert '"msg": "batch checked"' in out.stderr
