"""The explorer page in a real headless Chromium (Debian's /usr/bin/chromium,
driven by playwright; no browser download) against the e2e suite's devnet
(an honest and a dishonest node, a challenger sampling every leaf, 20 s window).

What the page shows is checked against what the chain says, read here over
web3: the job's status and the in-browser verification (which itself reads
the chain, not the coordinator), the liar's game move by move (event names
and transaction hashes) to the one-step proof and the slash. Screenshots of
every page go to tests/artifacts/explorer/ (git-ignored)."""

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from opinfer.chain import artifacts
from opinfer.chain.anvil import free_port

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "explorer"
CHAT, EMBED = "smollm2-135m-instruct", "all-minilm-l6-v2"
LAPTOP, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}
GAME_MOVES = {"Bisected", "Picked", "TensorRevealed", "Descended", "Chosen", "ChunkRevealed", "ElementPicked",
              "StepExecuted", "GameResolved"}


def eth(wei: int) -> str:
    return f"{wei // 10**18}.{(wei % 10**18) // 10**14:04d} ETH"   # as the page writes amounts


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: run `make deps`"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Page:
    """A browser tab on the explorer; fails the test on any uncaught script error."""

    def __init__(self, browser, base: str, viewport=LAPTOP):
        self.ctx = browser.new_context(viewport=viewport)
        self.p = self.ctx.new_page()
        self.base = base
        self.errors: list[str] = []
        self.p.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, route: str = "", query: str = "", wait: bool = True):
        self.p.goto(f"{self.base}{query}#/{route}")
        if wait:
            self.wait_loaded(route.split("/")[0] or "overview")
        return self.p

    def wait_loaded(self, name: str, timeout: float = 20_000):
        self.p.wait_for_function("(n) => { const v = document.querySelector('#view');"
                                 " return v.dataset.loaded && v.dataset.route === n; }", arg=name, timeout=timeout)

    def shot(self, name: str, full: bool = True):
        self.p.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full)

    def overflow(self) -> int:
        return self.p.evaluate("document.documentElement.scrollWidth - window.innerWidth")

    def close(self):
        self.ctx.close()
        assert not self.errors, self.errors


@pytest.fixture
def tab(browser, devnet):
    pages = []

    def make(viewport=LAPTOP):
        pages.append(Page(browser, devnet["api_url"].removesuffix("/v1") + "/explorer", viewport))
        return pages[-1]

    yield make
    for page in pages:
        page.close()


def contracts(devnet, client):
    w3 = client.chain().w3
    return w3, {name: w3.eth.contract(address=devnet["contracts"][name], abi=artifacts.load(name).abi)
                for name in ("DisputeGame", "StakeManager", "ResultRollup")}


def liar(devnet) -> str:
    return next(n["address"] for n in devnet["nodes"] if n["dishonest"])


def test_devnet_start_up_message_links_the_explorer(devnet):
    url = devnet["api_url"].removesuffix("/v1") + "/explorer"
    assert url in devnet["up_stdout"] and devnet.get("explorer_url") == url


def test_job_goes_pending_to_final_and_verifies_in_the_browser(devnet, client, tab):
    # Two requests at once: their batch usually has two leaves, and the proof a sibling to tamper with.
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda q: client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": q}], max_tokens=4), ["Name a fruit.", "Name a tree."]))
    job_id = answers[0].opinfer.job_id
    page = tab()
    p = page.open(f"job/{job_id}")
    seen, countdowns, deadline = [], [], time.monotonic() + 120
    while time.monotonic() < deadline:
        status = p.get_attribute("#job-status", "data-status")
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == "posted" and p.locator("#finality .countdown").count():
            countdowns.append(p.inner_text("#finality .countdown"))
            if len(countdowns) == 1:
                page.shot("job-posted-countdown")
        if status == "final":
            break
        time.sleep(0.5)
    assert seen[0] in ("pending", "posted") and seen[-1] == "final", seen
    assert any(c.startswith("final in ") for c in countdowns), countdowns    # the live countdown ran
    history = p.get_attribute("#job-status", "data-history").split(",")
    assert history[-1] == "final" and "posted" in history, history
    p.wait_for_selector("#chain-status[data-status='final']", timeout=10_000)   # read from the chain by the page
    answer = answers[0].choices[0].message.content.strip()
    assert answer and answer in p.inner_text(".answer")        # the answer as text, not only its token ids

    p.click("#verify")
    p.wait_for_selector("#verdict", timeout=20_000)
    assert p.get_attribute("#verdict", "data-ok") == "true", p.inner_text("#verify-result")
    assert p.inner_text("#verdict").startswith("verified")
    assert p.locator(".checks li.ok").count() == 6 and p.locator(".checks li.bad").count() == 0
    page.shot("job-verified")

    proof = p.input_value("#proof").split()
    if proof:
        proof[0] = proof[0][:-1] + ("1" if proof[0][-1] == "0" else "0")    # one hex digit off
    else:                   # the job was alone in its batch (the root is its leaf): a made-up sibling
        proof = ["0x" + "00" * 32]
    p.fill("#proof", "\n".join(proof))
    p.click("#verify")
    p.wait_for_function("document.querySelector('#verdict') && "
                        "document.querySelector('#verdict').dataset.ok === 'false'", timeout=20_000)
    assert "FAILED" in p.inner_text("#verdict")
    failed = p.inner_text(".checks").splitlines()
    assert any(line.startswith("✗ proof folds to the batch root on chain") for line in failed), failed
    assert any(line.startswith("✗ ResultRollup.verify_inclusion") for line in failed), failed
    time.sleep(2.5)                                             # a poll must not undo the user's edit
    assert p.input_value("#proof").split()[0] == proof[0]
    page.shot("job-tampered-proof")


def _liar_game(devnet, client, game, timeout: float = 120) -> int:
    """The first game against the liar; makes the liar serve a job when no game exists yet."""
    address = liar(devnet)

    def find():
        return next((gid for gid in range(1, game.functions.game_count().call() + 1)
                     if game.functions.games(gid).call()[2] == address), None)

    if find() is None:
        for i in range(12):   # plain requests until the router hands one to the liar (embeddings only)
            r = client.embeddings.create(model=EMBED, input=f"explorer request {i}",
                                         extra_body={"opinfer": {"cache": False}})
            if r.data[0].opinfer.node == address:
                break
    deadline = time.monotonic() + timeout
    while (gid := find()) is None and time.monotonic() < deadline:
        time.sleep(1)
    assert gid is not None, "the challenger opened no game against the dishonest node"
    return gid


def test_liars_game_is_shown_move_by_move_to_the_step_and_the_slash(devnet, client, tab):
    w3, c = contracts(devnet, client)
    game = c["DisputeGame"]
    gid = _liar_game(devnet, client, game)
    page = tab()
    p = page.open(f"game/{gid}")
    if p.locator("#outcome").count() == 0:           # still being played: whose turn, the clocks running
        assert p.inner_text("#turn") in ("node", "challenger")
        assert p.locator(".clock.running").count() == 1
        page.shot("game-live")
    p.wait_for_selector("#outcome", timeout=180_000)   # the page polls; the game ends by itself
    time.sleep(2.5)                                     # one more poll: every event of the final block
    page.wait_loaded("game")

    # Every move, in order, with its transaction, as the chain recorded them.
    logs = []
    for name in ("GameStarted", "TraceOpened", *sorted(GAME_MOVES), "GameVoided"):
        for log in getattr(game.events, name).get_logs(from_block=0, argument_filters={"game_id": gid}):
            logs.append((log["blockNumber"], log["logIndex"], name, "0x" + bytes(log["transactionHash"]).hex()))
    on_chain = [(name, tx) for *_, name, tx in sorted(logs)]
    shown = [(li.get_attribute("data-event"), li.get_attribute("data-tx")) for li in p.locator("li.move").all()]
    assert shown == on_chain
    events = [name for name, _ in shown]
    assert {"Bisected", "Picked", "TensorRevealed", "ChunkRevealed", "ElementPicked", "StepExecuted"} <= set(events)
    assert events[-2:] == ["StepExecuted", "GameResolved"]         # to the one-step proof, not a timeout
    assert "refuted" in p.locator("li.move[data-event='StepExecuted']").inner_text()
    # The narrowing: op range, then the tensor, then one element.
    labels = p.locator("li.move .mfocus small").all_inner_texts()
    assert labels[0].startswith("all ") and any("tensor" in t for t in labels) and labels[-1].startswith("element (")

    # The outcome: the challenger won, and the node lost what StakeManager.Slashed says.
    resolve_tx = on_chain[-1][1]
    slashed = [e for e in c["StakeManager"].events.Slashed.get_logs(from_block=0)
               if "0x" + bytes(e["transactionHash"]).hex() == resolve_tx]
    assert len(slashed) == 1 and slashed[0]["args"]["node"] == liar(devnet)
    assert "challenger won" in p.inner_text("#outcome")
    assert p.inner_text("#slashed") == eth(slashed[0]["args"]["amount"]) and slashed[0]["args"]["amount"] > 0
    assert p.inner_text("#turn") == "game over"
    page.shot("game-slashed")
    p.set_viewport_size({"width": 1280, "height": 1700})   # outcome, clocks and the narrowing in one picture
    page.shot("game-slashed-top", full=False)

    phone = tab(PHONE)
    phone.open(f"game/{gid}")
    assert phone.overflow() <= 0
    phone.shot("game-slashed-phone")


def test_batches_nodes_games_and_search(devnet, client, tab):
    w3, c = contracts(devnet, client)
    r = client.embeddings.create(model=EMBED, input="explorer search", extra_body={"opinfer": {"cache": False}})
    job_id = r.data[0].opinfer.job_id
    job = client.jobs.wait_final(job_id, timeout=120, poll_s=1, raise_on_invalid=False)
    page = tab()

    p = page.open("")
    assert p.locator("[data-job]").count() >= 1 and p.locator("[data-batch]").count() >= 1
    page.shot("overview")
    p = page.open("batches")
    batch_count = c["ResultRollup"].functions.batch_count().call()
    assert p.locator("[data-batch]").count() == min(batch_count, 100)
    page.shot("batches")
    page.open(f"batch/{job.batch_id}")
    assert p.locator(f"a[href='#/job/{job_id}']").count() == 1
    assert "✓ root matches" in p.inner_text(".kv")                   # checked against the chain by the page
    page.shot("batch")

    # Nodes: stake as the chain has it; each node's record of games as the chain's events say.
    p = page.open("nodes")
    game = c["DisputeGame"]
    for node in devnet["nodes"]:
        row = p.locator(f"tr[data-node='{node['address']}']")
        assert row.locator(".stake").inner_text() == eth(c["StakeManager"].functions.stake(node["address"]).call())
        lost = sum(1 for gid in range(1, game.functions.game_count().call() + 1)
                   if game.functions.games(gid).call()[2] == node["address"]
                   and game.functions.games(gid).call()[9] == 3)
        assert row.locator(".record").inner_text().split(" / ")[1] == str(lost)
    page.shot("nodes")
    p = page.open("games")
    assert p.locator("[data-game]").count() == game.functions.game_count().call()
    page.shot("games")

    # Search: a job id, a batch id, a node address, a batch's and a game move's transaction hash.
    def search(q: str) -> str:
        """Where the page went, or the error it showed instead."""
        before = p.evaluate("location.hash")
        p.evaluate("document.querySelector('#view').innerHTML = ''")    # no stale error
        p.fill("#q", q)
        p.press("#q", "Enter")
        p.wait_for_function("(b) => location.hash !== b || document.querySelector('#view-error')", arg=before,
                            timeout=30_000)
        return p.evaluate("location.hash") if p.locator("#view-error").count() == 0 else p.inner_text("#view-error")

    page.open("")
    assert search(job_id) == f"#/job/{job_id}"
    assert search(str(job.batch_id)) == f"#/batch/{job.batch_id}"
    assert search(job.node.lower()) == f"#/node/{job.node.lower()}"
    assert search(job.tx_hash) == f"#/batch/{job.batch_id}"
    if game.functions.game_count().call():
        move = game.events.GameStarted.get_logs(from_block=0)[0]
        assert search("0x" + bytes(move["transactionHash"]).hex()) == f"#/game/{move['args']['game_id']}"
    p.fill("#q", "0x" + "ab" * 32)
    p.press("#q", "Enter")
    p.wait_for_selector("#view-error")
    assert "nothing found" in p.inner_text("#view-error")

    phone = tab(PHONE)
    for route in ("", f"job/{job_id}", "nodes", "batches"):
        phone.open(route)
        assert phone.overflow() <= 0, route                  # no sideways scrolling on a phone
        phone.shot(f"phone-{route.split('/')[0] or 'overview'}")


def test_unreachable_chain_and_coordinator_show_banners(devnet, tab):
    page = tab()
    p = page.open("", query=f"?rpc=http://127.0.0.1:{free_port()}")
    p.wait_for_selector("#banner-chain", timeout=20_000)
    assert "chain RPC unreachable" in p.inner_text("#banner-chain")
    page.shot("banner-chain-unreachable")

    down = tab()
    down.p.route("**/v1/explorer/**", lambda route: route.abort())   # the coordinator's API gone
    p = down.open("", wait=False)
    p.wait_for_selector("#banner-coordinator", timeout=20_000)
    assert "coordinator unreachable" in p.inner_text("#banner-coordinator")
    down.shot("banner-coordinator-unreachable")
