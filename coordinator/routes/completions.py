"""POST /v1/completions: OpenAI's legacy text completion (plain-text prompt,
no chat template), with `echo` and `logprobs` so that a client can score a
text (the prompt's log-probabilities, as OpenAI's endpoint and vLLM give them)."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, StreamingResponse

from coordinator.deps import principal, service
from coordinator.errors import BadRequest
from coordinator.generation import TextStream, completion_logprobs, merge, table_for
from coordinator.routes.chat import fingerprint
from coordinator.routes.streaming import Run, job_header, stream, top_opinfer, usage
from coordinator.schemas import CompletionRequest
from coordinator.service import GenPlan, Generated

router = APIRouter()


def prompt_text(svc, req: CompletionRequest, plan: GenPlan, p: int) -> str:
    prompts = req.prompt if isinstance(req.prompt, list) and req.prompt and not isinstance(req.prompt[0], int) \
        else [req.prompt]
    item = prompts[p]
    return item if isinstance(item, str) else \
        svc.tokenizers.of(plan.model.name).decode(plan.prompts[p], skip_special_tokens=True)


class CompletionRender:
    def __init__(self, svc, plan: GenPlan, req: CompletionRequest, completion_id: str, created: int,
                 job_ids: list[str]):
        self.svc, self.plan, self.req = svc, plan, req
        self.table = table_for(svc.tokenizers.of(plan.model.name))
        self.base = {"id": completion_id, "object": "text_completion", "created": created, "model": req.model,
                     "system_fingerprint": fingerprint(plan)}
        self.include_usage = bool(req.stream_options and req.stream_options.include_usage)
        self.job_ids = job_ids
        self.texts = [TextStream(self.table, plan.stops) for _ in plan.jobs]
        self.seen = [0] * len(plan.jobs)
        self.offset = [0] * len(plan.jobs)
        self.started = [False] * len(plan.jobs)
        self.finished: list[Generated] = []

    def chunk(self, index: int, text: str, finish: str | None = None, logprobs=None, **extra) -> dict:
        body = {**self.base, "choices": [{"index": index, "text": text, "logprobs": logprobs,
                                          "finish_reason": finish}], **extra}
        if self.include_usage:
            body["usage"] = None
        return body

    def _start(self, index: int) -> list[dict]:
        if self.started[index]:
            return []
        self.started[index] = True
        text = prompt_text(self.svc, self.req, self.plan, self.plan.jobs[index][0]) if self.req.echo else ""
        self.offset[index] = len(text)
        return [self.chunk(index, text, opinfer={"job_id": "0x" + self.job_ids[index], "status": "streaming"})]

    def _pieces(self, index: int, pieces) -> list[dict]:
        text, entries = merge(pieces)
        if not text and not entries:
            return []
        logprobs = None
        if self.plan.top is not None:
            logprobs = completion_logprobs(self.table, entries, self.plan.top, self.offset[index])
        self.offset[index] += len(text)
        return [self.chunk(index, text, logprobs=logprobs)]

    def token(self, index: int, event: dict) -> list[dict]:
        out = self._start(index)
        self.seen[index] += 1
        return out + self._pieces(index, self.texts[index].push(int(event["id"]), event))

    def done(self, index: int, g: Generated) -> list[dict]:
        out = self._start(index)
        for i in range(self.seen[index], len(g.ids)):
            entry = g.logprobs[i] if g.logprobs else {"id": g.ids[i], "logprob": None, "top": None}
            out += self._pieces(index, self.texts[index].push(g.ids[i], entry))
        self.seen[index] = len(g.ids)
        out += self._pieces(index, self.texts[index].finish(g.finish_reason))
        self.finished.append(g)
        return out + [self.chunk(index, "", g.finish_reason, opinfer=g.answer.opinfer())]

    def end(self) -> list[dict]:
        if not self.include_usage:
            return []
        return [{**self.base, "choices": [], "usage": usage(self.plan, self.finished)}]


def whole(svc, req: CompletionRequest, plan: GenPlan, index: int, g: Generated) -> dict:
    table = table_for(svc.tokenizers.of(plan.model.name))
    text = TextStream(table, plan.stops)
    pieces = []
    for i, t in enumerate(g.ids):
        pieces += text.push(t, g.logprobs[i] if g.logprobs else None)
    generated, entries = merge(pieces + text.finish(g.finish_reason))
    prefix = prompt_text(svc, req, plan, plan.jobs[index][0]) if req.echo else ""
    logprobs = None
    if plan.top is not None:
        if req.echo:
            prompt = plan.prompts[plan.jobs[index][0]]
            entries = [{"id": t, "logprob": lp, "top": None}
                       for t, lp in zip(prompt, g.prompt_logprobs or [None] * len(prompt))] + entries
        logprobs = completion_logprobs(table, entries, plan.top, 0)
    return {"index": index, "text": prefix + generated, "logprobs": logprobs, "finish_reason": g.finish_reason,
            "opinfer": g.answer.opinfer()}


@router.post("/v1/completions")
async def completions(req: CompletionRequest, svc=Depends(service), who=Depends(principal)):
    if req.stream and req.echo and req.logprobs is not None:
        raise BadRequest("echo with logprobs is not streamed (the prompt's log-probabilities come with the "
                         "signed answer): ask without `stream`", param="stream", code="unsupported_parameter")
    plan = await svc.plan_completion(req, who)
    claimed = await svc.claim(plan, who)
    headers = job_header(claimed)
    completion_id = "cmpl-" + claimed[0][0]
    if not req.stream:
        answers = list(await asyncio.gather(*(svc.generate(plan, i, who, job_id, cached)
                                              for i, (job_id, cached) in enumerate(claimed))))
        return JSONResponse({"id": completion_id, "object": "text_completion",
                             "created": int(answers[0].answer.job.created_at), "model": req.model,
                             "choices": [whole(svc, req, plan, i, g) for i, g in enumerate(answers)],
                             "usage": usage(plan, answers), "system_fingerprint": fingerprint(plan),
                             "opinfer": top_opinfer(answers)}, headers=headers)
    run = Run(svc, plan, who, claimed)
    await run.first()
    render = CompletionRender(svc, plan, req, completion_id, int(time.time()), [job_id for job_id, _ in claimed])
    return StreamingResponse(stream(run, render), media_type="text/event-stream",
                             headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})
