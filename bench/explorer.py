"""The explorer page: its weight and how fast it first renders, on a devnet.

- page weight: the bytes of every asset the page loads (HTML, JS, CSS, icon),
  as served and gzip-compressed (what a proxy with compression would send);
- time to first render, in Debian's headless Chromium (playwright), each load
  in a fresh browser context (cold cache): first contentful paint (the page's
  frame), then the first view drawn with the coordinator's data (the
  `explorer-first-render` performance mark), for the overview and a job page
  (which also reads the chain itself);
- the in-browser verification of a job (leaf hash, proof, four eth_calls).

Uses the devnet described by --devnet FILE when given (e.g. .opinfer/devnet.json
of `make up`), otherwise starts one of its own (1 honest node, free ports) and
stops it afterwards.

    python -m bench.explorer [--json] [--devnet .opinfer/devnet.json] [--runs 5]
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import verdict

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
WEIGHT_TARGET = 100 * 1024      # bytes, uncompressed: no framework, no bundle
RENDER_TARGET_MS = 1000         # first view with data, on the devnet


def page_weight(base: str) -> dict:
    html = httpx.get(f"{base}/explorer", timeout=10)
    html.raise_for_status()
    assets = {"/explorer": html.content}
    for path in re.findall(r'(?:src|href)="(/explorer/static/[^"]+)"', html.text):
        r = httpx.get(base + path, timeout=10)
        r.raise_for_status()
        assets[path] = r.content
    total = sum(len(b) for b in assets.values())
    return {"assets": {p: len(b) for p, b in assets.items()}, "total_bytes": total,
            "gzip_bytes": sum(len(gzip.compress(b, 6)) for b in assets.values()),
            "target_bytes": WEIGHT_TARGET, "meets_target": total <= WEIGHT_TARGET}


def _load(browser, url: str, verify: bool = False) -> dict:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.goto(url)
    page.wait_for_function("performance.getEntriesByName('explorer-first-render').length > 0", timeout=30_000)
    out = page.evaluate("""() => ({
        fcp: (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime,
        data: performance.getEntriesByName('explorer-first-render')[0].startTime })""")
    if verify:
        page.wait_for_selector("#verify:not([disabled])", timeout=30_000)
        started = time.perf_counter()
        page.click("#verify")
        page.wait_for_selector("#verdict", timeout=30_000)
        out["verify"] = (time.perf_counter() - started) * 1000
        out["verified"] = page.get_attribute("#verdict", "data-ok") == "true" or \
            page.inner_text("#verdict").startswith("included on chain")
    ctx.close()
    return out


def first_render(base: str, job_id: str, runs: int) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        _load(browser, f"{base}/explorer#/")                     # warm the coordinator's index once
        overview = [_load(browser, f"{base}/explorer#/") for _ in range(runs)]
        job = [_load(browser, f"{base}/explorer#/job/{job_id}", verify=True) for _ in range(runs)]
        browser.close()
    med = lambda xs: round(statistics.median(xs), 1)  # noqa: E731
    data_ms = med([r["data"] for r in overview])
    return {"runs": runs, "overview_fcp_ms": med([r["fcp"] for r in overview]), "overview_data_ms": data_ms,
            "job_fcp_ms": med([r["fcp"] for r in job]), "job_data_ms": med([r["data"] for r in job]),
            "verify_ms": med([r["verify"] for r in job]), "verified": all(r["verified"] for r in job),
            "target_ms": RENDER_TARGET_MS,
            "meets_target": data_ms <= RENDER_TARGET_MS and med([r["data"] for r in job]) <= RENDER_TARGET_MS}


def _one_posted_job(info: dict) -> str:
    """An embedding job, waited for until it is in a posted batch (so the job page has a proof)."""
    from opinfer.sdk import Client

    with Client(api_key=info.get("api_key", "sk-devnet"), network=info["api_url"]) as client:
        r = client.embeddings.create(model="all-minilm-l6-v2", input="explorer bench",
                                     extra_body={"opinfer": {"cache": False}})
        job_id = r.data[0].opinfer.job_id
        deadline = time.monotonic() + 60
        while client.jobs.retrieve(job_id).batch_id is None and time.monotonic() < deadline:
            time.sleep(0.5)
    return job_id


def measure(devnet_file: str | None, runs: int) -> dict:
    net = None
    if devnet_file:
        info = json.loads(Path(devnet_file).read_text())
    else:
        from opinfer import devnet
        from opinfer.chain.anvil import free_port

        opts = devnet.Options(port=free_port(), api_port=free_port(), window=60, clock=60, nodes=1, dishonest=0,
                              batch_interval=1.0, state_dir=Path(tempfile.mkdtemp(prefix="opinfer-bench-explorer-")))
        net = devnet.launch(opts, log=lambda m: print(m, file=sys.stderr))
        info = net.info
    try:
        base = info["api_url"].removesuffix("/v1")
        job_id = _one_posted_job(info)
        return {"devnet": base, "page_weight": page_weight(base), "first_render": first_render(base, job_id, runs)}
    finally:
        if net is not None:
            net.stop()


def report(r: dict) -> None:
    w, f = r["page_weight"], r["first_render"]
    print(f"explorer at {r['devnet']}/explorer")
    print("\npage weight (every asset the page loads)")
    for path, n in w["assets"].items():
        print(f"  {path:<34} {n:>8,} bytes")
    print(f"  {'total':<34} {w['total_bytes']:>8,} bytes ({w['gzip_bytes']:,} gzip-compressed); "
          f"target ≤ {w['target_bytes']:,}: {verdict(w['meets_target'])}")
    print(f"\ntime to first render, headless Chromium, cold cache, median of {f['runs']}")
    print(f"  overview: first paint {f['overview_fcp_ms']} ms, with the coordinator's data {f['overview_data_ms']} ms")
    print(f"  job page: first paint {f['job_fcp_ms']} ms, with data and the chain's status {f['job_data_ms']} ms")
    print(f"  target ≤ {f['target_ms']} ms with data: {verdict(f['meets_target'])}")
    print(f"  in-browser verification of the job (leaf hash, proof, 4 eth_calls): {f['verify_ms']} ms"
          f" ({'passed' if f['verified'] else 'FAILED'})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--devnet", help="a running devnet's description (default: start one)")
    parser.add_argument("--runs", type=int, default=5, help="page loads per measurement (default 5)")
    args = parser.parse_args(argv)
    result = measure(args.devnet, args.runs)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    ok = result["page_weight"]["meets_target"] and result["first_render"]["meets_target"] and \
        result["first_render"]["verified"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
