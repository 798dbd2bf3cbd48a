// opinfer explorer: a single page, no build step, no library. Reads the
// coordinator's /v1/explorer API (polled every config.poll_ms) and, for what
// must not be taken on the coordinator's word (inclusion proofs, leaf status,
// batch deadlines, stakes), the chain itself over JSON-RPC (eth_call).
"use strict";
(function () {
  const $ = (sel, el) => (el || document).querySelector(sel);
  const state = {
    config: null, apiKey: localStorage.getItem("opinfer.apiKey") || "",
    rpcOverride: new URLSearchParams(location.search).get("rpc") || localStorage.getItem("opinfer.rpc") || "",
    chainTime: null, chainAt: 0, chainBlock: null, route: null, timer: null, tick: null, seq: 0,
    errors: { coordinator: null, chain: null, coordinatorChain: null, auth: null },
    job: { id: null, edited: false, history: [] },
  };

  // ------------------------------------------------------------ bytes, hex, ABI

  const hexToBytes = (h) => {
    h = String(h).replace(/^0x/, "");
    if (h.length % 2 || /[^0-9a-fA-F]/.test(h)) throw new Error(`not hex: ${String(h).slice(0, 20)}…`);
    const out = new Uint8Array(h.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(h.substr(2 * i, 2), 16);
    return out;
  };
  const bytesToHex = (b) => "0x" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  const concat = (...parts) => {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let o = 0;
    for (const p of parts) { out.set(p, o); o += p.length; }
    return out;
  };
  const keccakHex = (bytes) => bytesToHex(window.keccak256(bytes));
  const word = (n) => BigInt(n).toString(16).padStart(64, "0");           // uint256, hex without 0x
  const bytes32 = (h) => { const s = String(h).replace(/^0x/, "").toLowerCase(); if (s.length !== 64) throw new Error("not 32 bytes"); return s; };
  const selectors = {};
  const selector = (sig) => (selectors[sig] ||= keccakHex(new TextEncoder().encode(sig)).slice(2, 10));
  const words = (hex) => { const s = hex.replace(/^0x/, ""); const out = []; for (let i = 0; i < s.length; i += 64) out.push(s.slice(i, i + 64)); return out; };

  // The result leaf's hash, as ResultRollup computes it: keccak256(abi_encode(Leaf)),
  // Leaf = (bytes16 job_id, uint256 model_id, bytes32 input_root, bytes32 output_root,
  //         bytes32 input_hash, uint256 input_len, address node, bytes32 r, bytes32 vs)
  function leafHash(job) {
    const id = String(job.id).replace(/^0x/, "");
    if (id.length !== 32) throw new Error("a job id is 16 bytes");
    const input = hexToBytes(job.input);
    const sig = String(job.signature).replace(/^0x/, "");
    if (sig.length !== 130) throw new Error("a signature is 65 bytes");
    const r = sig.slice(0, 64), s = BigInt("0x" + sig.slice(64, 128)), v = parseInt(sig.slice(128), 16);
    const vs = (v === 27 || v === 28) ? (s | (BigInt(v - 27) << 255n)) : s;
    const enc = id.padEnd(64, "0") + word(job.model_id) + bytes32(job.input_root) + bytes32(job.output_root) +
      keccakHex(input).slice(2) + word(input.length) + String(job.node).replace(/^0x/, "").toLowerCase().padStart(64, "0") +
      r + word(vs);
    return keccakHex(hexToBytes(enc));
  }

  // Root implied by a leaf, its index and its siblings (lowest first), as the rollup folds it.
  function foldProof(index, leaf, proof) {
    let node = hexToBytes(leaf), i = BigInt(index);
    for (const sib of proof) {
      const s = hexToBytes(sib);
      if (s.length !== 32) throw new Error("a proof sibling is 32 bytes");
      node = window.keccak256(i % 2n === 0n ? concat(node, s) : concat(s, node));
      i /= 2n;
    }
    return bytesToHex(node);
  }

  // ------------------------------------------------------------ the chain, directly

  const rpcUrl = () => state.rpcOverride || (state.config && state.config.rpc_url);
  let rpcId = 0;
  async function rpc(method, params) {
    const url = rpcUrl();
    if (!url) throw new Error("no RPC URL (the coordinator's config did not load)");
    let res;
    try {
      res = await fetch(url, { method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ jsonrpc: "2.0", id: ++rpcId, method, params }), signal: AbortSignal.timeout(8000) });
    } catch (e) {
      throw new Error(`chain RPC unreachable at ${url} (${e.name === "TimeoutError" ? "timed out" : e.message})`);
    }
    const body = await res.json().catch(() => null);
    if (!body) throw new Error(`chain RPC at ${url} answered HTTP ${res.status} without JSON`);
    if (body.error) throw new Error(`chain RPC error: ${body.error.message || JSON.stringify(body.error)}`);
    return body.result;
  }
  const call = (to, sig, dataHex) => rpc("eth_call", [{ to, data: "0x" + selector(sig) + (dataHex || "") }, "latest"]);
  const contracts = () => state.config.contracts;
  const chain = {
    async batch(id) {
      const w = words(await call(contracts().ResultRollup, "batch(uint256)", word(id)));
      return { root: "0x" + w[0], leafCount: Number(BigInt("0x" + w[2])), deadline: Number(BigInt("0x" + w[3])),
        finalized: BigInt("0x" + w[5]) !== 0n };
    },
    async leafStatus(id, index) {
      const v = Number(BigInt(await call(contracts().ResultRollup, "leaf_status(uint256,uint256)", word(id) + word(index))));
      return ["unknown", "posted", "disputed", "final", "invalid"][v] || "unknown";
    },
    async includes(id, index, leaf, proof) {
      const data = word(id) + word(index) + bytes32(leaf) + word(128) + word(proof.length) + proof.map(bytes32).join("");
      return BigInt(await call(contracts().ResultRollup, "verify_inclusion(uint256,uint256,bytes32,bytes32[])", data)) === 1n;
    },
    async modelRoot(modelId) {
      return "0x" + words(await call(contracts().ModelRegistry, "get_model(uint256)", word(modelId)))[0];
    },
    async stake(address) {
      const a = String(address).replace(/^0x/, "").toLowerCase().padStart(64, "0");
      return BigInt(await call(contracts().StakeManager, "stake(address)", a));
    },
  };

  // Chain head (time and block), polled with every refresh: it also tells whether the chain is reachable.
  async function pollChain() {
    try {
      const block = await rpc("eth_getBlockByNumber", ["latest", false]);
      state.chainTime = Number(BigInt(block.timestamp));
      state.chainAt = Date.now();
      state.chainBlock = Number(BigInt(block.number));
      state.errors.chain = null;
    } catch (e) {
      state.errors.chain = e.message;
    }
  }
  // Chain time now, estimated from the last head read (blocks come every second or so).
  const chainNow = () => state.chainTime == null ? null : state.chainTime + Math.floor((Date.now() - state.chainAt) / 1000);

  // ------------------------------------------------------------ the coordinator

  class ApiFailure extends Error { constructor(message, status) { super(message); this.status = status; } }
  async function api(path) {
    const headers = {};
    if (state.apiKey) headers.authorization = "Bearer " + state.apiKey;
    let res;
    try {
      res = await fetch(path, { headers, signal: AbortSignal.timeout(15000) });
    } catch (e) {
      state.errors.coordinator = `coordinator unreachable at ${location.origin} (${e.name === "TimeoutError" ? "timed out" : e.message}); retrying`;
      throw new ApiFailure(state.errors.coordinator, 0);
    }
    const body = await res.json().catch(() => null);
    if (res.status === 401) {
      state.errors.auth = (body && body.error && body.error.message) || "this coordinator needs an API key";
      throw new ApiFailure(state.errors.auth, 401);
    }
    state.errors.auth = null;
    if (res.status === 429) {
      state.errors.coordinator = `the coordinator rate-limits this page: ${(body && body.error && body.error.message) || "HTTP 429"}; retrying`;
      throw new ApiFailure(state.errors.coordinator, 429);
    }
    if (res.status >= 500 && !(body && body.error && body.error.code === "chain_unavailable")) {
      state.errors.coordinator = `coordinator error at ${location.origin}: HTTP ${res.status}${body && body.error ? " — " + body.error.message : ""}`;
      throw new ApiFailure(state.errors.coordinator, res.status);
    }
    state.errors.coordinator = null;
    if (!res.ok) throw new ApiFailure((body && body.error && body.error.message) || `HTTP ${res.status}`, res.status);
    state.errors.coordinatorChain = body.chain_error || null;
    return body;
  }

  // ------------------------------------------------------------ formatting

  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const short = (h, n = 10) => { h = String(h || ""); return h.length > n + 4 ? h.slice(0, n) + "…" + h.slice(-4) : h; };
  const eth = (wei) => { if (wei == null) return "–"; const v = BigInt(wei); const whole = v / 10n ** 18n; const frac = (v % 10n ** 18n).toString().padStart(18, "0").slice(0, 4); return `${whole}.${frac} ETH`; };
  const ago = (t) => { if (!t) return "–"; const now = chainNow() || Date.now() / 1000; const d = Math.max(0, Math.round(now - t)); return d < 90 ? `${d} s ago` : d < 5400 ? `${Math.round(d / 60)} min ago` : `${Math.round(d / 3600)} h ago`; };
  const clock = (s) => { s = Math.max(0, Math.floor(s)); const m = Math.floor(s / 60); return `${m}:${String(s % 60).padStart(2, "0")}`; };
  const badge = (status) => `<span class="badge s-${esc(String(status).replace(/\s+/g, "-"))}">${esc(status)}</span>`;
  const link = (route, text, title) => `<a href="#/${route}"${title ? ` title="${esc(title)}"` : ""}>${esc(text)}</a>`;
  const jobLink = (id) => link(`job/${id}`, short(id, 12), id);
  const nodeLink = (a) => a ? link(`node/${a}`, short(a, 10), a) : "–";
  const txLink = (tx) => tx ? `<code class="tx" data-tx="${esc(tx)}" title="${esc(tx)}">${esc(short(tx, 12))}</code>` : "–";
  const table = (head, rows, cls) => `<div class="scroll"><table class="${cls || ""}"><thead><tr>${head.map((h) => `<th>${h}</th>`).join("")}</tr></thead><tbody>${rows.length ? rows.join("") : `<tr><td colspan="${head.length}" class="muted">none yet</td></tr>`}</tbody></table></div>`;
  const kv = (pairs) => `<dl class="kv">${pairs.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${v}</dd>`).join("")}</dl>`;
  const countdown = (deadline) => `<span class="countdown" data-deadline="${deadline}"></span>`;

  function windowBar(b) {
    const w = state.config && state.config.params ? state.config.params.challenge_window : null;
    if (!b.deadline || !w) return "–";
    if (b.state === "final") return `<div class="bar window"><i style="width:100%"></i></div><small>closed · batch finalized</small>`;
    return `<div class="bar window" data-deadline="${b.deadline}" data-window="${w}"><i></i></div>${countdown(b.deadline)}`;
  }
  function countsBar(c, total) {
    const parts = ["final", "posted", "disputed", "invalid", "pending"].filter((k) => c[k]);
    return `<div class="bar stack" title="${parts.map((k) => `${c[k]} ${k}`).join(", ")}">${parts.map((k) => `<i class="s-${k}" style="width:${100 * c[k] / Math.max(1, total)}%"></i>`).join("")}</div>
      <small>${parts.map((k) => `${c[k]} ${k}`).join(" · ") || "–"}</small>`;
  }

  // ------------------------------------------------------------ views

  const views = {};

  views.overview = async () => {
    const o = await api("/v1/explorer/overview");
    const l = o.leaves;
    return `<h1>Network</h1>
      <div class="cards">
        <div class="card"><b>${o.jobs}</b><span>jobs</span></div>
        <div class="card"><b>${l.final}</b><span>final</span></div>
        <div class="card"><b>${l.pending + l.posted}</b><span>awaiting finality</span></div>
        <div class="card"><b>${l.disputed}</b><span>disputed</span></div>
        <div class="card bad"><b>${l.invalid}</b><span>invalid (fraud proven)</span></div>
        <div class="card"><b>${o.batches}</b><span>batches</span></div>
        <div class="card"><b>${o.games.active} / ${o.games.total}</b><span>games active / all</span></div>
      </div>
      <section><h2>Latest jobs</h2>${jobsTable(o.recent_jobs)}</section>
      <section><h2>Latest batches <small>${link("batches", "all")}</small></h2>${batchesTable(o.recent_batches)}</section>
      <section><h2>Dispute games <small>${link("games", "all")}</small></h2>${gamesTable(o.recent_games)}</section>`;
  };

  function jobsTable(jobs) {
    return table(["job", "model", "node", "status", "batch / leaf", "finality", "created"], jobs.map((j) => `<tr data-job="${esc(j.id)}">
      <td>${jobLink(j.id)}</td><td>${esc(j.model)}</td><td>${nodeLink(j.node)}</td><td>${badge(j.status)}</td>
      <td>${j.batch_id ? link(`batch/${j.batch_id}`, `#${j.batch_id}`) + ` / ${j.leaf_index}` : "–"}</td>
      <td>${j.status === "posted" && j.deadline ? countdown(j.deadline) : j.status === "pending" ? "not posted yet" : "–"}</td>
      <td>${ago(j.created)}</td></tr>`));
  }

  function batchesTable(batches) {
    return table(["batch", "state", "leaves", "leaf status", "challenge window", "tx"], batches.map((b) => `<tr data-batch="${b.id}">
      <td>${link(`batch/${b.id}`, `#${b.id}`)}</td><td>${badge(b.state)}</td><td>${b.leaf_count}</td>
      <td>${countsBar(b.counts, b.leaf_count)}</td><td>${windowBar(b)}</td><td>${txLink(b.tx_hash)}</td></tr>`));
  }

  function gamesTable(games) {
    return table(["game", "batch / leaf", "node", "challenger", "status", "moves", "last move"], games.map((g) => `<tr data-game="${g.id}">
      <td>${link(`game/${g.id}`, `#${g.id}`)}</td><td>${link(`batch/${g.batch_id}`, `#${g.batch_id}`)} / ${g.leaf_index}</td>
      <td>${nodeLink(g.node)}</td><td>${link(`challenger/${g.challenger}`, short(g.challenger, 10), g.challenger)}</td>
      <td>${badge(g.status)}</td><td>${g.moves}</td><td>${esc(g.last_event)} ${ago(g.updated)}</td></tr>`));
  }

  views.batches = async () => {
    const b = await api("/v1/explorer/batches?limit=100");
    return `<h1>Batches</h1><p class="muted">Each batch's leaves finalize when its challenge window closes, except leaves under dispute.</p>${batchesTable(b.data)}`;
  };

  views.batch = async (id) => {
    const b = await api(`/v1/explorer/batches/${encodeURIComponent(id)}`);
    let onChain = "";
    try {
      const c = await chain.batch(b.id);
      const same = c.root.toLowerCase() === String(b.root).toLowerCase();
      onChain = `${same ? "✓ root matches" : "✗ ROOT DIFFERS: " + esc(c.root)} · ${c.leafCount} leaves · ${c.finalized ? "finalized" : "not finalized"}`;
    } catch (e) { onChain = `<span class="bad">${esc(e.message)}</span>`; }
    return `<h1>Batch #${b.id} ${badge(b.state)}</h1>
      ${kv([["root", `<code>${esc(b.root)}</code>`], ["on chain (read directly)", onChain], ["tx", txLink(b.tx_hash)],
            ["block", esc(b.block_number)], ["challenge window", windowBar(b)], ["leaf status", countsBar(b.counts, b.leaf_count)],
            ["games", b.games.length ? b.games.map((g) => link(`game/${g}`, `#${g}`)).join(" ") : "none"]])}
      <h2>Leaves</h2>${table(["leaf", "job", "model", "node", "status"], b.leaves.map((l) => `<tr>
        <td>${l.index}</td><td>${jobLink(l.job_id)}</td><td>${esc(l.model)}</td><td>${nodeLink(l.node)}</td><td>${badge(l.status)}</td></tr>`))}
      <h2>Events</h2>${table(["event", "when", "tx"], b.events.map((e) => `<tr><td>${esc(e.event)}</td><td>${ago(e.time)}</td><td>${txLink(e.tx)}</td></tr>`))}`;
  };

  // A job: answer, roots, status with countdown, proof and the in-browser verification.
  views.job = async (id) => {
    const j = await api(`/v1/explorer/jobs/${encodeURIComponent(id)}`);
    if (state.job.id !== j.id) state.job = { id: j.id, edited: false, history: [], data: null, chain: null };
    state.job.data = j;
    let onChain = null, chainErr = null;
    if (j.batch_id) {
      try {
        const [b, st] = await Promise.all([chain.batch(j.batch_id), chain.leafStatus(j.batch_id, j.leaf_index)]);
        onChain = { status: st, deadline: b.deadline, finalized: b.finalized };
      } catch (e) { chainErr = e.message; }
    }
    const status = j.status;
    const h = state.job.history;
    if (h[h.length - 1] !== status) h.push(status);
    const result = j.result || {};
    const answer = j.kind === "embedding" ? `${(result.embedding || []).length} integers (scale 2<sup>-14</sup>): <code>[${esc((result.embedding || []).slice(0, 8).join(", "))}, …]</code>`
      : `${j.text != null ? `<div class="answer">${esc(j.text)}</div>` : ""}<small>token ids <code>${esc((result.ids || []).slice(0, 32).join(" "))}${(result.ids || []).length > 32 ? " …" : ""}</code> (${esc(result.finish_reason || "")})</small>`;
    const deadline = onChain ? onChain.deadline : j.deadline;
    const finality = status === "final" ? "final" : status === "invalid" ? "fraud proven: this result is invalid"
      : status === "pending" ? "answered; waiting to be posted in a batch" : status === "disputed" ? "under dispute: final only if the node wins"
      : deadline ? countdown(deadline) : "–";
    return `<h1>Job <code class="id">${esc(short(j.id, 18))}</code> <span id="job-status" data-status="${esc(status)}" data-history="${esc(h.join(","))}">${badge(status)}</span></h1>
      <p class="finality" id="finality">${finality}</p>
      ${kv([["job id", `<code>${esc(j.id)}</code>`], ["model", `${esc(j.model)} (id ${j.model_id})`], ["node", nodeLink(j.node)],
            ["answer", answer], ["input root", `<code>${esc(j.input_root)}</code>`], ["output root", `<code>${esc(j.output_root)}</code>`],
            ["batch / leaf", j.batch_id ? `${link(`batch/${j.batch_id}`, `#${j.batch_id}`)} / leaf ${j.leaf_index}` : "not posted yet"],
            ["posted in tx", txLink(j.tx_hash)],
            ["status on chain", onChain ? `<span id="chain-status" data-status="${esc(onChain.status)}">${badge(onChain.status)}</span> <small>(read from the chain directly)</small>` : chainErr ? `<span class="bad">${esc(chainErr)}</span>` : "–"],
            ["disputes", (j.games || []).length ? j.games.map((g) => link(`game/${g}`, `game #${g}`)).join(" ") : "none"],
            ["usage", `${j.usage.prompt_tokens} prompt + ${j.usage.completion_tokens} completion tokens`]])}
      <section class="verify" id="verify-panel" data-keep="${esc(j.id)}"></section>`;
  };

  function renderVerifyPanel() {
    const j = state.job.data, panel = $("#verify-panel");
    if (!panel || !j) return;
    if (!panel.dataset.ready) {
      panel.innerHTML = `<h2>Inclusion proof</h2>
        <p class="muted">Siblings from the leaf up, one per line. The check below runs in this browser: it recomputes the
        leaf hash from the job's fields, folds the proof to a root, and asks the chain (not the coordinator) for the batch root,
        the rollup's own inclusion check, the registered model root and the leaf's status. Edit the proof to see it fail.</p>
        <label>leaf hash <code id="leaf-hash"></code></label>
        <textarea id="proof" rows="4" spellcheck="false" aria-label="inclusion proof"></textarea>
        <button id="verify" type="button">Verify in the browser</button>
        <div id="verify-result" aria-live="polite"></div>`;
      panel.dataset.ready = "1";
      $("#proof").addEventListener("input", () => { state.job.edited = true; });
      $("#verify").addEventListener("click", () => verifyInBrowser());
    }
    $("#leaf-hash").textContent = j.leaf_hash || "(not posted yet)";
    const text = (j.proof || []).join("\n");
    if (!state.job.edited && $("#proof").value !== text) {
      $("#proof").value = text;
      $("#proof").rows = Math.min(8, Math.max(2, (j.proof || []).length));
    }
    $("#verify").disabled = j.batch_id == null;
  }

  async function verifyInBrowser() {
    const j = state.job.data, out = $("#verify-result");
    const checks = [];
    const add = (name, ok, detail) => { checks.push({ name, ok, detail: detail || "" }); };
    out.innerHTML = `<p class="muted">checking against the chain at ${esc(rpcUrl())} …</p>`;
    let status = null;
    try {
      const chainId = Number(BigInt(await rpc("eth_chainId", [])));
      add("chain id", chainId === state.config.chain_id, `${chainId} (config says ${state.config.chain_id})`);
      const mine = leafHash(j);
      add("leaf hash recomputed from the job's fields", mine === String(j.leaf_hash).toLowerCase(), short(mine, 18));
      const proof = $("#proof").value.split(/[\s,]+/).filter(Boolean);
      let root = null;
      try { root = foldProof(j.leaf_index, mine, proof); } catch (e) { add("proof well-formed", false, e.message); }
      const b = await chain.batch(j.batch_id);
      if (root) add("proof folds to the batch root on chain", root === b.root.toLowerCase(), `${short(root, 18)} vs ${short(b.root, 18)}`);
      let included = false;
      try { included = proof.every((p) => /^(0x)?[0-9a-fA-F]{64}$/.test(p)) && await chain.includes(j.batch_id, j.leaf_index, mine, proof); } catch (e) { /* a malformed proof: not included */ }
      add("ResultRollup.verify_inclusion (eth_call)", included, `batch ${j.batch_id}, leaf ${j.leaf_index}, ${proof.length} siblings`);
      const registered = await chain.modelRoot(j.model_id);
      add("model root registered on chain", registered.toLowerCase() === String(j.model_root).toLowerCase(), short(registered, 18));
      status = await chain.leafStatus(j.batch_id, j.leaf_index);
      add("leaf status on chain is final", status === "final", status);
    } catch (e) {
      add("chain reachable", false, e.message);
    }
    const failed = checks.find((c) => !c.ok);
    const notYet = failed && failed.name.startsWith("leaf status") && (status === "posted" || status === "disputed") &&
      checks.filter((c) => !c.ok).length === 1;
    const verdict = !failed ? "verified: included on chain and final" : notYet ? `included on chain, not final yet (status ${status})` : `verification FAILED: ${failed.name}`;
    out.innerHTML = `<p id="verdict" class="${!failed ? "ok" : notYet ? "wait" : "bad"}" data-ok="${!failed}">${esc(verdict)}</p>
      <ul class="checks">${checks.map((c) => `<li class="${c.ok ? "ok" : "bad"}">${c.ok ? "✓" : "✗"} ${esc(c.name)} <small>${esc(c.detail)}</small></li>`).join("")}</ul>`;
  }

  views.games = async () => {
    const g = await api("/v1/explorer/games?limit=200");
    const c = await api("/v1/explorer/challengers");
    return `<h1>Dispute games</h1>${gamesTable(g.data)}
      <h2>Challengers</h2>${challengersTable(c.data)}`;
  };

  function challengersTable(rows) {
    return table(["challenger", "games", "won", "lost", "open", "rewards", "bond (free / locked)", "last active"], rows.map((r) => `<tr>
      <td>${link(`challenger/${r.address}`, short(r.address, 10), r.address)}</td><td>${r.games}</td><td>${r.won}</td><td>${r.lost}</td><td>${r.open}</td>
      <td>${eth(r.rewards_wei)}</td><td>${eth(r.bond_wei)} / ${eth(r.locked_bond_wei)}</td><td>${ago(r.last_active)}</td></tr>`));
  }

  const STAGES = [["ops", "op range"], ["tensor", "tensor"], ["chunk", "chunk"], ["element", "element"], ["step", "one step"]];

  function focusBar(f) {
    if (!f) return "";
    if (f.scale === "element") return `<div class="bar focus element"><i style="left:calc(50% - 4px);width:8px"></i></div>`;
    const lo = 100 * f.lo / Math.max(1, f.total), w = Math.max(0.6, 100 * (f.hi - f.lo) / Math.max(1, f.total));
    return `<div class="bar focus ${esc(f.scale)}"><i style="left:${lo}%;width:${w}%"></i></div>`;
  }

  views.game = async (id) => {
    const g = await api(`/v1/explorer/games/${encodeURIComponent(id)}`);
    state.gameFetched = { chainTime: g.chain_time, at: Date.now() };
    const stage = g.status !== "active" ? "step" : { open: "ops", bisect: "ops", pick: "ops", tensor: "ops", descend: "tensor", choose: "tensor", chunk: "chunk", element: "element", step: "step" }[g.phase];
    const c = g.clocks;
    const clockHtml = (who, left) => `<div class="clock ${c.running === who ? "running" : ""}" data-who="${who}" data-left="${left}" data-budget="${c.budget}" data-running="${c.running === who ? 1 : 0}">
        <span>${who}</span><b class="time">${clock(left)}</b><div class="bar"><i style="width:${100 * left / Math.max(1, c.budget)}%"></i></div></div>`;
    const o = g.outcome;
    const outcome = !o ? "" : `<section class="outcome ${o.winner === "challenger" ? "slashed" : ""}" id="outcome">
        <h2>Outcome: ${o.winner ? esc(o.winner) + " won" : "void"}</h2>
        ${kv([["reason", esc(o.reason)], ...(o.slashed_wei ? [["node slashed", `<b id="slashed">${eth(o.slashed_wei)}</b>`], ["challenger's reward", eth(o.reward_wei)], ["to the treasury", eth(o.to_treasury_wei)]] : []),
              ...(o.bond_awarded_wei ? [["challenger's bond to the node", eth(o.bond_awarded_wei)]] : []), ["tx", txLink(o.tx)]])}</section>`;
    return `<h1>Game #${g.id} ${badge(g.status)}</h1>
      ${kv([["disputed leaf", `${link(`batch/${g.batch_id}`, `batch #${g.batch_id}`)} leaf ${g.leaf_index} · ${jobLink(g.job_id)}`],
            ["node", nodeLink(g.node)], ["challenger", link(`challenger/${g.challenger}`, short(g.challenger, 10), g.challenger)],
            ["bond", eth(g.bond_wei)], ["program", `${g.num_ops} ops`],
            ["turn", g.to_move ? `<b id="turn">${esc(g.to_move)}</b> to move (${esc(g.phase)})` : `<span id="turn">game over</span>`]])}
      <div class="clocks">${clockHtml("node", c.node_left)}${clockHtml("challenger", c.challenger_left)}</div>
      <ol class="stages">${STAGES.map(([k, name]) => `<li class="${k === stage ? "now" : ""}">${name}</li>`).join("")}</ol>
      ${outcome}
      <h2>Moves <small>${g.moves.length}, narrowing the dispute</small></h2>
      <ol class="moves" id="moves">${g.moves.map((m) => `<li class="move by-${esc(m.by)}" data-event="${esc(m.event)}" data-tx="${esc(m.tx)}">
        <div class="mhead"><span class="n">${m.n}</span> <b>${esc(m.event)}</b> <span class="by">${esc(m.by)}</span> <span class="when">${ago(m.time)}</span> ${txLink(m.tx)}</div>
        <div class="mtext">${esc(m.text)}</div>
        <div class="mfocus">${focusBar(m.focus)}<small>${esc(m.focus.label || "")}</small></div></li>`).join("")}</ol>
`;
  };

  views.nodes = async () => {
    const n = await api("/v1/explorer/nodes");
    const stakes = await Promise.all(n.data.map((r) => chain.stake(r.address).then((v) => v.toString()).catch(() => null)));
    return `<h1>Nodes</h1>${nodesTable(n.data, stakes)}`;
  };

  function nodesTable(rows, stakes) {
    return table(["node", "endpoint", "models", "stake (on chain)", "rotation", "jobs served", "invalid", "disputes won / lost / open"], rows.map((r, i) => `<tr data-node="${esc(r.address)}">
      <td>${nodeLink(r.address)}</td><td><code>${esc(r.endpoint)}</code></td><td>${esc(r.models.join(", "))}</td>
      <td class="stake">${stakes && stakes[i] != null ? eth(stakes[i]) : eth(r.stake_wei) + " <small>(coordinator)</small>"}</td>
      <td>${r.in_rotation ? badge("in rotation") : badge("out")}</td><td>${r.jobs_served}</td><td>${r.jobs_invalid}</td>
      <td class="record">${r.disputes.won} / ${r.disputes.lost} / ${r.disputes.open}</td></tr>`));
  }

  views.node = async (address) => {
    const [n, jobs, games] = await Promise.all([api("/v1/explorer/nodes"), api(`/v1/explorer/jobs?limit=50&node=${encodeURIComponent(address)}`),
      api(`/v1/explorer/games?limit=50&party=${encodeURIComponent(address)}`)]);
    const row = n.data.filter((r) => r.address.toLowerCase() === address.toLowerCase());
    const stakes = await Promise.all(row.map((r) => chain.stake(r.address).then((v) => v.toString()).catch(() => null)));
    return `<h1>Node <code class="id">${esc(short(address, 14))}</code></h1>
      ${row.length ? nodesTable(row, stakes) : `<p class="muted">not in the coordinator's pool (any more)</p>`}
      <h2>Jobs served</h2>${jobsTable(jobs.data)}<h2>Dispute games</h2>${gamesTable(games.data)}`;
  };

  views.challenger = async (address) => {
    const [c, games] = await Promise.all([api("/v1/explorer/challengers"), api(`/v1/explorer/games?limit=100&party=${encodeURIComponent(address)}`)]);
    return `<h1>Challenger <code class="id">${esc(short(address, 14))}</code></h1>
      ${challengersTable(c.data.filter((r) => r.address.toLowerCase() === address.toLowerCase()))}<h2>Games</h2>${gamesTable(games.data)}`;
  };

  views.settings = async () => `<h1>Settings</h1>
    <form id="settings" class="settings">
      <label>API key <small>(sent as a Bearer token to the coordinator; kept in this browser)</small><input id="set-key" type="password" value="${esc(state.apiKey)}"></label>
      <label>RPC URL <small>(empty: the coordinator's, ${esc(state.config ? state.config.rpc_url : "?")})</small><input id="set-rpc" value="${esc(state.rpcOverride)}"></label>
      <button type="submit">Save</button></form>`;

  // ------------------------------------------------------------ router, polling, banners

  function parseRoute() {
    const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
    const name = parts[0] || "overview";
    return { name: views[name] ? name : "missing", arg: parts[1] };
  }

  function renderBanners() {
    const e = state.errors, out = [];
    if (e.coordinator) out.push(`<div class="banner error" id="banner-coordinator">⚠ ${esc(e.coordinator)}</div>`);
    if (e.auth) out.push(`<div class="banner warn" id="banner-auth">🔑 ${esc(e.auth)}: set an API key in ${link("settings", "settings")}</div>`);
    if (e.chain) out.push(`<div class="banner error" id="banner-chain">⚠ ${esc(e.chain)}: proofs and finality cannot be checked against the chain</div>`);
    if (e.coordinatorChain && !e.chain) out.push(`<div class="banner warn" id="banner-coordinator-chain">⚠ the coordinator cannot read the chain: ${esc(e.coordinatorChain)}</div>`);
    $("#banners").innerHTML = out.join("");
    $("#chainline").innerHTML = state.chainBlock != null && !e.chain
      ? `chain ${esc(state.config ? state.config.chain_id : "?")} · block <b id="block">${state.chainBlock}</b> · ${esc(rpcUrl())}` : "";
  }

  async function refresh(first) {
    const seq = ++state.seq;
    const route = state.route;
    try {
      if (!state.config || state.config.chain_error) state.config = await api("/v1/explorer/config");
      await pollChain();
      if (route.name === "missing") { $("#view").innerHTML = `<h1>Not found</h1><p>No page ${esc(location.hash)}.</p>`; return; }
      if (route.name === "settings" && !first) return;   // do not redraw a form being typed in
      if (state.searchMessage && !first) return;         // a failed search's answer stays until the user moves on
      const html = await views[route.name](route.arg);
      if (seq !== state.seq) return;                     // a newer refresh (another route) won
      const keep = $("#verify-panel");
      const view = $("#view");
      if (keep && route.name === "job" && keep.dataset.keep === state.job.id) {
        // keep the proof being edited and the verification result: replace everything else
        const tmp = document.createElement("div");
        tmp.innerHTML = html;
        tmp.querySelector("#verify-panel").replaceWith(keep);
        view.replaceChildren(...tmp.childNodes);
      } else {
        view.innerHTML = html;
      }
      if (route.name === "job") renderVerifyPanel();
      if (route.name === "settings") bindSettings();
      view.dataset.route = route.name;
      view.dataset.loaded = String(Date.now());
      if (!state.rendered) { state.rendered = true; performance.mark("explorer-first-render"); }   // bench.explorer
    } catch (e) {
      if (seq !== state.seq) return;
      if (!(e instanceof ApiFailure) || e.status === 404 || e.status === 400 || e.status === 503) {
        $("#view").innerHTML = `<h1>${e.status === 404 ? "Not found" : "Cannot show this page"}</h1><p class="bad" id="view-error">${esc(e.message)}</p>`;
      }
    } finally {
      renderBanners();
      tick();
    }
  }

  function bindSettings() {
    $("#settings").addEventListener("submit", (ev) => {
      ev.preventDefault();
      state.apiKey = $("#set-key").value.trim();
      state.rpcOverride = $("#set-rpc").value.trim();
      localStorage.setItem("opinfer.apiKey", state.apiKey);
      localStorage.setItem("opinfer.rpc", state.rpcOverride);
      state.config = null;
      location.hash = "#/";
    });
  }

  // Once a second: countdowns, window bars and the running chess clock move between polls.
  function tick() {
    const now = chainNow();
    document.querySelectorAll("[data-deadline]").forEach((el) => {
      const deadline = Number(el.dataset.deadline);
      if (now == null) return;
      const left = deadline - now;
      if (el.classList.contains("countdown")) {
        el.textContent = left > 0 ? `final in ${left} s (window closes at chain time ${deadline})` : "window closed: finalizing…";
        el.dataset.left = String(left);
      } else if (el.dataset.window) {
        const w = Number(el.dataset.window);
        el.firstElementChild.style.width = `${Math.min(100, Math.max(0, 100 * (w - left) / w))}%`;
      }
    });
    if (state.gameFetched) {
      const elapsed = Math.floor((Date.now() - state.gameFetched.at) / 1000);
      document.querySelectorAll(".clock[data-running='1']").forEach((el) => {
        const left = Math.max(0, Number(el.dataset.left) - elapsed), budget = Number(el.dataset.budget);
        el.querySelector(".time").textContent = clock(left);
        el.querySelector(".bar i").style.width = `${100 * left / Math.max(1, budget)}%`;
      });
    }
  }

  function go() {
    state.searchMessage = false;
    state.route = parseRoute();
    document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === state.route.name ||
      (a.dataset.nav === "games" && state.route.name === "game") || (a.dataset.nav === "batches" && state.route.name === "batch") ||
      (a.dataset.nav === "nodes" && state.route.name === "node")));
    $("#view").dataset.loaded = "";
    refresh(true);
  }

  $("#search").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const q = $("#q").value.trim();
    if (!q) return;
    try {
      const r = await api(`/v1/explorer/search?q=${encodeURIComponent(q)}`);
      const target = `#/${r.kind}/${r.id}`;
      if (location.hash === target) go(); else location.hash = target;   // same page: no hashchange
    } catch (e) {
      // The live refresh would redraw the previous page over this answer: drop the one in
      // flight (a newer seq) and skip redraws until the route changes (go() clears it).
      state.seq++;
      state.searchMessage = true;
      $("#view").innerHTML = `<h1>Search</h1><p class="bad" id="view-error">${esc(e.message)}</p>`;
    }
  });

  window.addEventListener("hashchange", go);
  // Exposed for tests and the console: the pure checks, computed as the page computes them.
  window.opinferExplorer = { leafHash, foldProof, selector, state };
  go();
  (async function loop() {
    for (;;) {
      const every = (state.config && state.config.poll_ms) || 2000;
      await new Promise((r) => setTimeout(r, every));
      if (!document.hidden) await refresh(false);
    }
  })();
  setInterval(tick, 1000);
})();
