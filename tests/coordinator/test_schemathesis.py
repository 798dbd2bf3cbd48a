"""schemathesis against the served coordinator: no generated request gets a 5xx.

schemathesis needs a newer hypothesis than the one eth-brownie pins, so it
lives in its own virtual environment (.venv-schemathesis, made by `make
deps`) and runs as its CLI against the app served over real HTTP with real
nodes, a real chain and SQLite behind it.
"""

import re
import subprocess
from pathlib import Path

from conftest import run_coordinator

SCHEMATHESIS = Path(__file__).resolve().parents[2] / ".venv-schemathesis" / "bin" / "schemathesis"


def test_schemathesis_finds_no_server_error(net, tmp_path):
    assert SCHEMATHESIS.exists(), f"{SCHEMATHESIS} is missing: run `make deps`"
    running = run_coordinator(net, tmp_path / "c.db", max_completion_tokens=2, default_max_tokens=1)
    try:
        url = running.server.url
        result = subprocess.run(
            [str(SCHEMATHESIS), "run", f"{url}/openapi.json", "--checks", "not_a_server_error",
             "--max-examples", "15", "--workers", "1", "--request-timeout", "60",
             "--generation-deterministic", "--suppress-health-check", "all"],
            capture_output=True, text=True, timeout=900)
    finally:
        running.stop()
    report = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    selected = re.search(r"Selected: (\d+)/(\d+)", result.stdout)
    tested = re.search(r"Tested: (\d+)", result.stdout)
    assert selected and tested and int(tested.group(1)) == int(selected.group(2)) > 0, report   # every operation
    assert " generated, " in result.stdout and "failed" not in result.stdout.split("Test cases:")[-1], report
