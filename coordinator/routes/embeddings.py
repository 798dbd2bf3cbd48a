"""POST /v1/embeddings."""

import base64

import orjson
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from coordinator.deps import principal, service
from coordinator.schemas import EmbeddingRequest
from coordinator.service import embedding_floats

router = APIRouter()


class FloatsResponse(JSONResponse):
    """JSON rendered by orjson: the same text for Python floats as the json
    module (shortest round-trip form), about ten times faster on an embedding's
    vector, which is most of this response."""

    def render(self, content) -> bytes:
        return orjson.dumps(content)


@router.post("/v1/embeddings")
async def embeddings(req: EmbeddingRequest, svc=Depends(service), who=Depends(principal)):
    answers = await svc.embeddings(req, who)
    data = []
    for index, answer in enumerate(answers):
        vector = embedding_floats(answer.job.result["embedding"], req.model)
        if req.encoding_format == "base64":
            value = base64.b64encode(vector.astype("<f4").tobytes()).decode()
        else:
            value = vector.tolist()
        data.append({"object": "embedding", "index": index, "embedding": value,
                     "opinfer": answer.opinfer()})
    tokens = sum(a.job.prompt_tokens for a in answers)
    ids = ["0x" + a.job.id for a in answers]
    body = {"object": "list", "data": data, "model": req.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "opinfer": {**answers[0].opinfer(), "job_ids": ids}}
    return FloatsResponse(body, headers={"x-opinfer-job-id": ",".join(ids)})


