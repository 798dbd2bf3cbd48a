"""The operator's model lifecycle as a user runs it (docs/models.md, "Model lifecycle"):
`opinfer model build` writes a program file whose root is the library's, `opinfer model
register` puts it in a real ModelRegistry on anvil (the owner only, names unique, the
committed context), `opinfer model list` shows it, and `opinfer node run --model` refuses
to start with a program whose root is not the registry's. MiniLM only: it builds in seconds."""

import contextlib
import io
import subprocess
import sys
import time

import httpx
import pytest
from web3 import HTTPProvider, Web3

from opinfer.chain.anvil import Anvil, dev_keys, free_port
from opinfer.chain.deploy import ProtocolParams, deploy
from opinfer.chain.sender import TxSender
from opinfer.cli import main
from opinfer.models.built import load_program, read_meta, save_program
from opinfer.models.minilm import weights
from opinfer.models.minilm.program import default_program

NAME = "all-minilm-l6-v2"
BUILD_OUTPUT = {}     # program file -> what `opinfer model build` printed


@pytest.fixture(scope="module")
def program_file(tmp_path_factory):
    """Built from the package's safetensors folder, as an operator names it."""
    out = tmp_path_factory.mktemp("programs") / "minilm.npz"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["model", "build", str(weights.model_dir()), "--out", str(out)]) == 0
    BUILD_OUTPUT[out] = printed.getvalue()
    return out


@pytest.fixture(scope="module")
def chain():
    keys = dev_keys(3)   # owner, someone else, a node
    with Anvil(accounts=3) as anvil:
        w3 = Web3(HTTPProvider(anvil.url))
        d = deploy(w3, TxSender(w3, keys[0]), ProtocolParams(challenge_window=60, clock_budget=60))
        yield anvil.url, d.addresses, keys


def _flags(chain, key):
    url, addresses, _ = chain
    return ["--rpc", url, "--registry", addresses["ModelRegistry"], "--key", key]


def test_build_writes_the_library_programs_root(program_file):
    out = BUILD_OUTPUT[program_file]
    root = default_program().model_root
    assert f"model_root  0x{root.hex()}" in out and f"file        {program_file}" in out
    meta = read_meta(program_file)
    assert meta["model_root"] == "0x" + root.hex() and meta["num_ops"] == default_program().num_ops
    # the sealed digest and the full Merkle recomputation agree
    assert load_program(program_file, root, verify="digest").model_root == root
    assert main(["model", "verify", str(program_file), "--root", "0x" + root.hex()]) == 0


def test_register_list_and_the_cli_errors(program_file, chain, capsys, tmp_path):
    owner, other = chain[2][0], chain[2][1]
    capsys.readouterr()
    assert main(["model", "register", str(program_file), "--price", "1000", "--context", "512",
                 *_flags(chain, owner)]) == 0
    assert capsys.readouterr().out.strip().endswith("model id 1")
    assert main(["model", "list", "--rpc", chain[0], "--registry", chain[1]["ModelRegistry"]]) == 0
    listing = capsys.readouterr().out
    assert NAME in listing and read_meta(program_file)["model_root"][:18] in listing and "1000" in listing

    cases = [  # (argv, what the message must say)
        (["--context", "512", *_flags(chain, owner)], "already has a model named 'all-minilm-l6-v2': id 1 (the same root)"),
        (["--context", "512", "--name", "minilm-2", *_flags(chain, other)], "is not the ModelRegistry's owner"),
        (["--context", "256", "--name", "minilm-3", *_flags(chain, owner)], "commits a context of 512 positions"),
    ]
    for extra, message in cases:
        assert main(["model", "register", str(program_file), "--price", "1000", *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert main(["model", "register", str(tmp_path / "missing.npz"), "--price", "1", "--context", "512",
                 *_flags(chain, owner)]) == 2
    assert "no such program file" in capsys.readouterr().err
    assert main(["model", "build", str(tmp_path)]) == 2
    assert "no model of this library accepts it" in capsys.readouterr().err


def test_node_refuses_a_program_whose_root_is_not_the_registrys(program_file, chain, tmp_path):
    """The registry holds the built MiniLM root (registered above, or here when run alone);
    the node is given a file of the same model with one weight changed (another root)."""
    url, addresses, keys = chain
    w3 = Web3(HTTPProvider(url))
    registry = w3.eth.contract(address=addresses["ModelRegistry"],
                               abi=__import__("opinfer.chain.artifacts", fromlist=["abi"]).abi("ModelRegistry"))
    if not registry.functions.model_id_by_name(NAME).call():
        assert main(["model", "register", str(program_file), "--price", "1000", "--context", "512",
                     *_flags(chain, keys[0])]) == 0
    program = load_program(program_file)
    weights_ = [w.copy() for w in program.weights]
    weights_[3].flat[0] += 1
    other = type(program)(program.ops, weights_, program.widths, program.steps_mode, program.name, program.limits)
    other_file = tmp_path / "other.npz"
    save_program(other, other_file)
    base = [sys.executable, "-m", "opinfer.cli", "node", "run", "--model", NAME, "--key", keys[2], "--rpc", url,
            "--rollup", addresses["ResultRollup"], "--stake", "1", "--port", str(free_port())]
    done = subprocess.run([*base, "--program", str(other_file)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "refusing to start" in done.stderr and "0x" + other.model_root.hex() in done.stderr
    assert read_meta(program_file)["model_root"] in done.stderr and "Traceback" not in done.stderr
    # No file at all: the node names what to do instead of calibrating.
    done = subprocess.run([*base, "--programs-dir", str(tmp_path / "empty")], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and "no built program for all-minilm-l6-v2" in done.stderr, done.stderr
    assert "opinfer model build" in done.stderr


def test_node_serves_from_the_registered_program(program_file, chain, tmp_path):
    """With the registered file the node stakes, announces and serves /healthz, and logs how
    long it took from process start (the engine rebuilt from the file's integers equals the
    calibrated one: tests/unit/test_built_programs.py)."""
    url, addresses, keys = chain
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "opinfer.cli", "node", "run", "--model", NAME, "--key", keys[2],
                             "--rpc", url, "--rollup", addresses["ResultRollup"], "--stake", "1", "--port", str(port),
                             "--program", str(program_file), "--state", str(tmp_path / "node.db")],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert proc.poll() is None and health.status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "program loaded" in out and "startup_s" in out, out[-2000:]


def test_challenger_executes_the_registered_program_file(program_file):
    """`opinfer challenger run --program FILE`: the executor is the file's (engine from its
    integers, the registered root); a file whose root is not the registry's is refused."""
    from challenger.errors import ConfigError
    from challenger.executors import program_executors
    from opinfer.semantics.jobinput import JobInput
    from opinfer.trace.outputs import tensor_root

    root = default_program().model_root
    executors = program_executors({NAME: root}, [str(program_file)])
    mine = executors[NAME]
    assert mine.program_file == str(program_file) and mine.program().model_root == root
    job = JobInput((101, 7592, 102))
    assert mine.output_root(job) == tensor_root(default_program().run(job)[-1])
    with pytest.raises(ConfigError, match="the challenger would re-execute another program"):
        program_executors({NAME: b"\x01" * 32}, [str(program_file)])
