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
        from opinfer.engine import minilm_program, smollm2_program
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
