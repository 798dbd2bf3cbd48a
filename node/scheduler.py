"""Continuous batching of a chat model's jobs (iteration-level scheduling).

One worker thread per chat model drives its model's Decoder (parts.decoder): at
every step it lets waiting jobs join (up to max_batch running), runs one native
pass over every running job (one token per decoding job, prompt chunks of
newcomers: at most prefill_tokens prompt tokens per step in all), hands each
sampled token to its job at once (streaming), and lets finished jobs leave.
No job waits for another to finish; a running stream waits at most one pass of
max_batch + prefill_tokens rows for its next token (docs/serving.md gives the
measured bound). A job's tokens, and so its output root, are the ones it gets
alone: the Decoder chooses each job's tokens from its own logits row only.

Log-probabilities (opinfer.engine.logprobs) are computed here, on the worker,
for the jobs that ask for them; they are not part of the signed output."""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Callable

from node.errors import BadJob, NodeError
from opinfer.engine.logprobs import prompt_logprobs, token_logprobs
from opinfer.models import JobRefused
from opinfer.semantics.jobinput import JobInput

log = logging.getLogger("opinfer.node.scheduler")

# on_token(index, token id, logprob or None, top [[id, logprob], ...] or None)
OnToken = Callable[[int, int, "float | None", "list | None"], None]


class GenerationFailed(NodeError):
    """The engine failed in the middle of a job (nothing is signed for it)."""


class Cancelled(GenerationFailed):
    """The job was cancelled (its client went away) and left the batch."""


class Ticket:
    """A submitted job: its future ((output, payload) or the error), its options and progress."""

    def __init__(self, job: JobInput, logprobs: int | None, want_prompt: bool, on_token: OnToken | None):
        self.job, self.logprobs, self.want_prompt, self.on_token = job, logprobs, want_prompt, on_token
        self.future: Future = Future()
        self.cancelled = False
        self.stream = None
        self.token_lp: list[dict] = []
        self.prompt_lp: list = [None]

    def cancel(self) -> None:
        """Leave at the next step (the client went away); nothing is signed."""
        self.cancelled = True


class Scheduler:
    def __init__(self, engine, max_batch: int = 8, prefill_tokens: int | None = 64, name: str = "scheduler",
                 on_step: Callable[[int], None] | None = None):
        self.engine = engine                  # node.engines.Engine of a chat model
        self.parts = engine.spec.parts        # its decoder(prefill), request(job) and result(job, ids, reason)
        self.max_batch = max(1, max_batch)
        self.decoder = self.parts.decoder(prefill_tokens)
        self.on_step = on_step
        self._q: queue.Queue = queue.Queue()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def prefill_tokens(self) -> int | None:
        return self.decoder.prefill_tokens

    def submit(self, job: JobInput, on_token: OnToken | None = None, logprobs: int | None = None,
               prompt_logprobs: bool = False) -> Ticket:
        ticket = Ticket(job, logprobs, prompt_logprobs, on_token)
        if self._stop:
            ticket.future.set_exception(RuntimeError("scheduler stopped"))
        else:
            self._q.put(ticket)
        return ticket

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is queued and running, then stop."""
        self._stop = True
        self._q.put(None)
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker

    def _loop(self) -> None:
        running: list[Ticket] = []
        closing = False
        while True:
            while len(running) < self.max_batch:
                idle = not running and not closing
                try:
                    # block only when nothing runs: a running batch never waits for arrivals
                    item = self._q.get() if idle else self._q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    continue
                if self._admit(item):
                    running.append(item)
            if closing and not running and self._q.empty():
                return
            for t in [t for t in running if t.cancelled]:
                self.decoder.remove(t.stream)
                running.remove(t)
                t.future.set_exception(Cancelled("cancelled"))
            if not running:
                continue
            if self.on_step:
                self.on_step(len(running))
            try:
                events, finished = self.decoder.step()
                for ev in events:
                    self._deliver(ev)
            except Exception as exc:  # noqa: BLE001 - a bug must not hang every waiting client
                log.exception("decode step failed")
                for t in running:
                    self.decoder.remove(t.stream)
                    if not t.future.done():
                        t.future.set_exception(GenerationFailed(f"the engine failed: {exc}"))
                running = []
                continue
            for s in finished:
                t = s.ticket
                running.remove(t)
                self._finish(t)

    def _admit(self, t: Ticket) -> bool:
        try:
            self.engine.check(t.job)
            request = self.parts.request(t.job)
            if t.logprobs is not None and not 0 <= t.logprobs <= 20:
                raise BadJob("logprobs must lie in [0, 20]")
            session = self.engine.engine.session(max_ctx=len(t.job.tokens) + t.job.max_tokens)
            t.stream = self.decoder.add(session, request, prompt_logits=t.want_prompt)
        except Exception as exc:  # noqa: BLE001 - reported to this job only
            t.future.set_exception(exc)
            return False
        t.stream.ticket = t
        if t.stream.done:   # nothing to generate
            self._finish(t)
            return False
        return True

    def _deliver(self, ev) -> None:
        t = ev.stream.ticket
        if ev.prompt_rows is not None:
            t.prompt_lp.extend(prompt_logprobs(ev.prompt_rows, ev.stream.prompt, ev.start))
        if ev.token is None:
            return
        lp = top = None
        if t.logprobs is not None:
            lp, top = token_logprobs(ev.logits, ev.token, t.logprobs)
            t.token_lp.append({"id": ev.token, "logprob": lp, "top": top})
        if t.on_token is not None:
            try:
                t.on_token(len(ev.stream.out) - 1, ev.token, lp, top)
            except Exception:  # noqa: BLE001 - a listener's failure is not the job's
                log.exception("token listener failed")

    def _finish(self, t: Ticket) -> None:
        s = t.stream
        if s.error is not None:
            t.future.set_exception(GenerationFailed(f"the engine failed at token {len(s.out)}: {s.error}"))
            return
        try:
            result = self.parts.result(t.job, s.out, s.reason)
        except Exception as exc:  # noqa: BLE001
            result = GenerationFailed(f"the engine failed: {exc}")
        if isinstance(result, Exception):
            t.future.set_exception(BadJob(str(result)) if isinstance(result, JobRefused) else result)
            return
        output, payload = result
        if t.logprobs is not None:
            payload["logprobs"] = t.token_lp
        if t.want_prompt:
            payload["prompt_logprobs"] = t.prompt_lp[:len(s.prompt)]
        t.future.set_result((output, payload))
