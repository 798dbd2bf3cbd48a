"""Running a generation plan's choices and streaming them as server-sent events
(chat and text completion share this; each route renders its own chunks).

- Every choice is a job of its own, run concurrently; their token events go
  to one queue in arrival order.
- The response starts with the first token (or a cached answer): an error
  before that is a plain HTTP error (4xx/5xx, the OpenAI error object); after
  it, an error is a `data: {"error": {...}}` event and the stream ends without
  [DONE] (the official clients raise APIError on it). A choice's last chunk
  carries its `opinfer` object (job id, status, node, roots, signature) and is
  sent only after the leaf's signature and the streamed ids were checked and
  the job recorded (docs/coordinator.md, "Streaming").
- A client that goes away cancels the jobs still running (the node stops; a
  job that finished is recorded)."""

from __future__ import annotations

import asyncio
import json
import logging

import orjson

from coordinator.errors import ApiError
from coordinator.service import Answer, GenPlan, Generated

log = logging.getLogger("opinfer.coordinator.stream")


class InternalError(ApiError):
    status = 500
    type = "server_error"
    code = "internal_error"


class Run:
    """The choices of one request, running; events ("token" | "done" | "error", index, payload)."""

    def __init__(self, svc, plan: GenPlan, who, claimed: list[tuple[str, Answer | None]]):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.left = len(claimed)
        self.head = None
        self.tasks = [asyncio.create_task(self._one(svc, plan, who, i, job_id, cached))
                      for i, (job_id, cached) in enumerate(claimed)]

    async def _one(self, svc, plan, who, index: int, job_id: str, cached) -> None:
        async def emit(event: dict) -> None:
            self.queue.put_nowait(("token", index, event))
        try:
            generated = await svc.generate(plan, index, who, job_id, cached, on_token=emit)
            self.queue.put_nowait(("done", index, generated))
        except ApiError as exc:
            self.queue.put_nowait(("error", index, exc))
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug: an error event, never a traceback
            log.exception("choice %d of a stream failed", index)
            self.queue.put_nowait(("error", index, InternalError("internal error while streaming")))

    async def first(self) -> None:
        """Wait for the first event: an error then is raised (a plain HTTP error)."""
        event = await self.queue.get()
        if event[0] == "error":
            self.cancel()
            raise event[2]
        self.head = event

    async def events(self):
        if self.head is not None:
            event, self.head = self.head, None
        else:
            event = await self.queue.get()
        while True:
            yield event
            if event[0] in ("done", "error"):
                self.left -= 1
                if event[0] == "error" or self.left == 0:
                    return
            event = await self.queue.get()

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()


def sse(body: dict) -> bytes:
    # orjson: a fraction of json.dumps's time per chunk, the same JSON values (UTF-8 rather than
    # \u escapes, no spaces). Chunks with log-probabilities keep json.dumps: a token the sampler
    # can never draw has logprob -inf, which json writes as -Infinity and orjson as null.
    if any(c.get("logprobs") for c in body.get("choices") or ()):
        return b"data: " + json.dumps(body).encode() + b"\n\n"
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def stream(run: Run, render):
    """The SSE body: render.token / render.done per event, render.end() after the last, then [DONE].
    Events already queued when one is rendered go out in the same write (one send per burst,
    not per token: the node sends a step's tokens together)."""
    out: list[bytes] = []
    try:
        async for kind, index, payload in run.events():
            if kind == "error":
                out.append(sse(payload.body()))
                yield b"".join(out)
                return
            chunks = render.token(index, payload) if kind == "token" else render.done(index, payload)
            out.extend(sse(chunk) for chunk in chunks)
            if out and run.queue.empty():
                yield b"".join(out)
                out = []
        out.extend(sse(chunk) for chunk in render.end())
        out.append(b"data: [DONE]\n\n")
        yield b"".join(out)
    finally:
        run.cancel()


def job_header(claimed) -> dict:
    return {"x-opinfer-job-id": ",".join("0x" + job_id for job_id, _ in claimed)}


def usage(plan: GenPlan, answers: list[Generated]) -> dict:
    prompt = sum(len(p) for p in plan.prompts)
    completion = sum(len(g.ids) for g in answers)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def top_opinfer(answers: list[Generated]) -> dict:
    """The response's `opinfer` object: the first choice's, plus every choice's job id when n > 1."""
    out = answers[0].answer.opinfer()
    if len(answers) > 1:
        out["job_ids"] = ["0x" + g.answer.job.id for g in answers]
    return out
