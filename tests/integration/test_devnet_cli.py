"""`opinfer devnet up` as a user runs it: a real process, Ctrl-C to stop."""

import json
import signal
import subprocess
import sys
import time

from web3 import HTTPProvider, Web3

from opinfer.chain.anvil import free_port


def test_devnet_up_writes_state_and_stops_cleanly(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "opinfer.cli", "devnet", "up", "--port", str(port), "--window", "60"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = tmp_path / ".opinfer" / "devnet.json"
    try:
        deadline = time.monotonic() + 300   # both model roots are rebuilt from the weights (~30 s idle)
        while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert state.exists(), proc.stdout.read() if proc.poll() is not None else "devnet.json not written"
        info = json.loads(state.read_text())
        w3 = Web3(HTTPProvider(info["rpc_url"]))
        assert w3.eth.chain_id == info["chain_id"]
        assert set(info["contracts"]) == {"StakeManager", "ModelRegistry", "ResultRollup", "ElementRules",
                                          "DecoderOps", "StepVerifier", "DisputeGame"}
        for address in info["contracts"].values():
            assert len(w3.eth.get_code(address)) > 0
        assert info["params"]["challenge_window"] == 60
        # Both models are registered under the roots their weights and programs give.
        from opinfer.chain.deploy import contract
        from opinfer.models.minilm import program as minilm_program
        from opinfer.models.smollm2 import program as smollm2_program
        registry = contract(w3, "ModelRegistry", info["contracts"]["ModelRegistry"])
        for module in (minilm_program, smollm2_program):
            program = module.default_program()
            model = info["models"][program.name]
            root, ops_per_step, _, active = registry.functions.get_model(model["id"]).call()
            assert active and root == program.model_root and ops_per_step == program.num_ops
        assert info["accounts"]["coordinator"]["address"].startswith("0x")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "devnet stopped" in out
    assert not state.exists()


def test_devnet_down_without_devnet_names_the_problem(tmp_path):
    result = subprocess.run([sys.executable, "-m", "opinfer.cli", "devnet", "down"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "no running devnet" in result.stderr
    assert "Traceback" not in result.stderr


def _start_chain_only(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "opinfer.cli", "devnet", "up", "--chain-only", "--port", str(port)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state = tmp_path / ".opinfer" / "devnet.json"
    deadline = time.monotonic() + 300
    while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert state.exists(), proc.stdout.read() if proc.poll() is not None else "devnet.json not written"
    return proc, Web3(HTTPProvider(json.loads(state.read_text())["rpc_url"], request_kwargs={"timeout": 2}))


def _chain_gone(w3, timeout=15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            w3.eth.block_number
        except Exception:  # noqa: BLE001 - connection refused: anvil is gone
            return True
        time.sleep(0.2)
    return False


def test_a_killed_supervisor_takes_its_chain_with_it(tmp_path):
    """SIGKILL runs no clean-up in the supervisor: the kernel's parent-death signal must stop anvil."""
    proc, w3 = _start_chain_only(tmp_path)
    assert w3.eth.block_number >= 0
    proc.kill()
    proc.wait(10)
    assert _chain_gone(w3), "anvil outlived its SIGKILLed supervisor"


def test_ctrl_c_through_a_closed_pipe_still_stops_everything(tmp_path):
    """`make up | tee log`, then Ctrl-C: tee dies first, so the supervisor's next print hits a closed pipe."""
    proc, w3 = _start_chain_only(tmp_path)
    proc.stdout.close()                      # the reader (tee) is gone
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    assert _chain_gone(w3), "anvil outlived its supervisor after a broken pipe"
    assert not (tmp_path / ".opinfer" / "devnet.json").exists()


def test_services_never_outlive_their_supervisor(tmp_path):
    """A service started by the devnet's supervisor gets SIGTERM when the supervisor is SIGKILLed."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from opinfer.devnet import Service\n"
        "svc = Service('sleeper', [sys.executable, '-c', 'import time; time.sleep(600)'], {}, Path(sys.argv[1]))\n"
        "svc.start()\n"
        "print(svc.proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    sup = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "sleeper.log")], stdout=subprocess.PIPE,
                           text=True)
    child = int(sup.stdout.readline())
    sup.kill()
    sup.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().split()[2] == "Z":   # exited, waiting for its (new) parent to reap it
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"service {child} outlived its SIGKILLed supervisor")


def test_a_service_started_off_the_main_thread_outlives_that_thread(tmp_path):
    """The parent-death signal follows the forking thread: a service a harness (re)starts from a worker
    thread must not die when that thread ends."""
    import threading

    from opinfer.devnet import Service

    svc = Service("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], {}, tmp_path / "s.log")
    t = threading.Thread(target=svc.start)
    t.start()
    t.join()
    time.sleep(0.5)
    try:
        assert svc.alive()
    finally:
        svc.stop()


def test_coordinator_create_key_imports_a_secret_from_stdin(tmp_path):
    """How the devnet gives the coordinator its published key: through the coordinator's own
    CLI, never by writing into its database; bad secrets are refused with a message, no traceback."""
    env = {**__import__("os").environ, "OPINFER_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}"}
    cmd = [sys.executable, "-m", "opinfer.cli", "coordinator", "create-key"]
    ok = subprocess.run(cmd + ["devnet", "--rpm", "0", "--secret-stdin"], input="sk-devnet-test\n", env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "sk-devnet-test" not in ok.stdout       # the secret is not echoed back
    bad = subprocess.run(cmd + ["other", "--secret-stdin"], input="a b\n", env=env, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "at least 8 characters" in bad.stderr

    from coordinator import db, keys
    from coordinator import models as m

    sessions = db.session_factory(db.make_engine(env["OPINFER_DATABASE_URL"]))
    with sessions() as s:
        rows = s.query(m.ApiKey).all()
        assert [(r.name, r.rate_limit_rpm) for r in rows] == [("devnet", 0)]
        assert rows[0].key_hash == keys.hash_key("sk-devnet-test")


def test_the_default_clock_serves_the_models_whole_context():
    """`opinfer devnet up` with its default clock takes SmolLM2's 4,096 positions (the clock
    covers the trace of the longest job, docs/protocol.md); a shorter clock keeps 1,024."""
    from opinfer import devnet
    from opinfer.cli import build_parser

    default = build_parser(["devnet", "up"]).parse_args(["devnet", "up"]).clock
    assert default == devnet.Options().clock == devnet.LONG_CONTEXT_CLOCK_S
    assert devnet.context_cap(default) is None
    assert devnet.context_cap(default - 1) == devnet.SHORT_CLOCK_CONTEXT == 1025
