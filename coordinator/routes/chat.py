"""POST /v1/chat/completions (JSON or server-sent events)."""

import json

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, StreamingResponse

from coordinator.deps import principal, service
from coordinator.schemas import ChatRequest
from coordinator.service import ChatAnswer

router = APIRouter()


def usage(a: ChatAnswer) -> dict:
    completion = len(a.ids)
    return {"prompt_tokens": a.prompt_tokens, "completion_tokens": completion,
            "total_tokens": a.prompt_tokens + completion}


def fingerprint(a: ChatAnswer) -> str:
    return "opinfer-" + a.answer.job.model_root.hex()[:16]


@router.post("/v1/chat/completions")
async def chat_completions(req: ChatRequest, svc=Depends(service), who=Depends(principal)):
    a = await svc.chat(req, who)
    job = a.answer.job
    headers = {"x-opinfer-job-id": "0x" + job.id}
    completion_id = "chatcmpl-" + job.id
    created = int(job.created_at)
    if not req.stream:
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": created, "model": req.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": a.text, "refusal": None},
                         "finish_reason": a.finish_reason, "logprobs": None}],
            "usage": usage(a), "system_fingerprint": fingerprint(a), "opinfer": a.answer.opinfer(),
        }, headers=headers)

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(delta: dict, finish: str | None, extra: dict | None = None) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": req.model,
                "system_fingerprint": fingerprint(a),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        if include_usage:
            body["usage"] = None
        body.update(extra or {})
        return f"data: {json.dumps(body)}\n\n"

    async def events():
        # The node signs the whole output, so the text exists before the
        # first event; it is sent token by token as OpenAI clients expect.
        yield chunk({"role": "assistant", "content": "", "refusal": None}, None, {"opinfer": a.answer.opinfer()})
        for piece in a.pieces:
            if piece:
                yield chunk({"content": piece}, None)
        yield chunk({}, a.finish_reason)
        if include_usage:
            body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": req.model,
                    "system_fingerprint": fingerprint(a), "choices": [], "usage": usage(a)}
            yield f"data: {json.dumps(body)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={**headers, "cache-control": "no-cache"})
