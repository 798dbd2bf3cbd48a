"""POST /v1/chat/completions (JSON, or server-sent events as tokens are generated)."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, StreamingResponse

from coordinator.deps import principal, service
from coordinator.generation import TextStream, chat_logprob, merge, table_for
from coordinator.routes.streaming import Run, job_header, stream, top_opinfer, usage
from coordinator.schemas import ChatRequest
from coordinator.service import GenPlan, Generated

router = APIRouter()


def fingerprint(plan: GenPlan) -> str:
    return "opinfer-" + plan.model.model_root.hex()[:16]


class ChatRender:
    """Token events -> chat.completion.chunk bodies, one TextStream per choice."""

    def __init__(self, svc, plan: GenPlan, req: ChatRequest, completion_id: str, created: int, job_ids: list[str]):
        self.plan, self.req = plan, req
        self.table = table_for(svc.tokenizers.of(plan.model.name))
        self.base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": req.model,
                     "system_fingerprint": fingerprint(plan)}
        self.include_usage = bool(req.stream_options and req.stream_options.include_usage)
        self.job_ids = job_ids
        self.texts = [TextStream(self.table, plan.stops) for _ in plan.jobs]
        self.seen = [0] * len(plan.jobs)
        self.started = [False] * len(plan.jobs)
        self.finished: list[Generated] = []

    def chunk(self, index: int, delta: dict, finish: str | None = None, logprobs=None, **extra) -> dict:
        body = {**self.base, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                          "finish_reason": finish}], **extra}
        if self.include_usage:
            body["usage"] = None
        return body

    def _pieces(self, index: int, pieces) -> list[dict]:
        text, entries = merge(pieces)
        if not text and not entries:
            return []
        logprobs = {"content": entries, "refusal": None} if self.plan.top is not None else None
        return [self.chunk(index, {"content": text}, logprobs=logprobs)]

    def _start(self, index: int) -> list[dict]:
        if self.started[index]:
            return []
        self.started[index] = True
        # the job id is known from the first byte; the leaf comes with the last chunk
        return [self.chunk(index, {"role": "assistant", "content": "", "refusal": None},
                           opinfer={"job_id": "0x" + self.job_ids[index], "status": "streaming"})]

    def token(self, index: int, event: dict) -> list[dict]:
        out = self._start(index)
        self.seen[index] += 1
        entry = chat_logprob(self.table, event, self.plan.top) if self.plan.top is not None else None
        return out + self._pieces(index, self.texts[index].push(int(event["id"]), entry))

    def done(self, index: int, g: Generated) -> list[dict]:
        out = self._start(index)
        text = self.texts[index]
        for i in range(self.seen[index], len(g.ids)):   # a cached answer: every token now
            entry = chat_logprob(self.table, g.logprobs[i], self.plan.top) if self.plan.top is not None else None
            out += self._pieces(index, text.push(g.ids[i], entry))
        self.seen[index] = len(g.ids)
        out += self._pieces(index, text.finish(g.finish_reason))
        self.finished.append(g)
        return out + [self.chunk(index, {}, g.finish_reason, opinfer=g.answer.opinfer())]

    def end(self) -> list[dict]:
        if not self.include_usage:
            return []
        return [{**self.base, "choices": [], "usage": usage(self.plan, self.finished)}]


def whole(svc, plan: GenPlan, g: Generated) -> tuple[str, list]:
    text = TextStream(table_for(svc.tokenizers.of(plan.model.name)), plan.stops)
    table = text.table
    pieces = []
    for i, t in enumerate(g.ids):
        entry = chat_logprob(table, g.logprobs[i], plan.top) if plan.top is not None else None
        pieces += text.push(t, entry)
    return merge(pieces + text.finish(g.finish_reason))


@router.post("/v1/chat/completions")
async def chat_completions(req: ChatRequest, svc=Depends(service), who=Depends(principal)):
    plan = await svc.plan_chat(req, who)
    claimed = await svc.claim(plan, who)
    headers = job_header(claimed)
    completion_id = "chatcmpl-" + claimed[0][0]
    created = int(time.time())
    if not req.stream:
        answers = list(await asyncio.gather(*(svc.generate(plan, i, who, job_id, cached)
                                              for i, (job_id, cached) in enumerate(claimed))))
        choices = []
        for i, g in enumerate(answers):
            text, entries = whole(svc, plan, g)
            choices.append({"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                            "finish_reason": g.finish_reason,
                            "logprobs": {"content": entries, "refusal": None} if plan.top is not None else None,
                            "opinfer": g.answer.opinfer()})
        return JSONResponse({"id": completion_id, "object": "chat.completion",
                             "created": int(answers[0].answer.job.created_at), "model": req.model,
                             "choices": choices, "usage": usage(plan, answers),
                             "system_fingerprint": fingerprint(plan), "opinfer": top_opinfer(answers)},
                            headers=headers)
    run = Run(svc, plan, who, claimed)
    await run.first()      # an error before the first token is a plain HTTP error
    render = ChatRender(svc, plan, req, completion_id, created, [job_id for job_id, _ in claimed])
    return StreamingResponse(stream(run, render), media_type="text/event-stream",
                             headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})
