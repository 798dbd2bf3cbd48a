"""GET /v1/models, GET /v1/models/{model}."""

from fastapi import APIRouter, Depends

from coordinator.deps import coordinator, principal
from coordinator.errors import ModelNotFound
from coordinator.service import kind_of
from opinfer import models

router = APIRouter()


def context_length(c, mi) -> int:
    """Positions a job may use: the model's (its spec: what its program can prove), and
    for chat no more than the coordinator's max_context_tokens (prompt + completion)."""
    spec = models.get(mi.name)
    return spec.context if spec.kind == models.EMBEDDING else min(spec.context, c.settings.max_context_tokens or spec.context)


def describe(c, mi) -> dict:
    from opinfer.models import sampling_defaults

    price = str(mi.price_per_1k)
    out = {"id": mi.name, "object": "model", "created": 0, "owned_by": "opinfer",
           # the names vLLM, OpenRouter and LiteLLM read
           "context_length": context_length(c, mi), "max_model_len": context_length(c, mi),
           "pricing": {"unit": "wei per 1,000 tokens (prompt + completion)", "prompt": price, "completion": price},
           "opinfer": {"model_id": mi.id, "model_root": "0x" + mi.model_root.hex(), "kind": kind_of(mi.name),
                        "num_ops": mi.num_ops, "price_per_1k_tokens_wei": str(mi.price_per_1k),
                        "nodes": len(c.pool.serving(mi.id))}}
    if kind_of(mi.name) == "chat":
        temperature, top_p = sampling_defaults(mi.name)
        out["max_completion_tokens"] = c.service._max_new(mi.name)      # the spec's, or the operator's lower one
        out["sampling_defaults"] = {"temperature": temperature, "top_p": top_p}
    return out


@router.get("/v1/models")
def list_models(c=Depends(coordinator), _who=Depends(principal)) -> dict:
    return {"object": "list", "data": [describe(c, mi) for mi in c.catalog.served()]}


@router.get("/v1/models/{model:path}")
def get_model(model: str, c=Depends(coordinator), _who=Depends(principal)) -> dict:
    for mi in c.catalog.served():
        if mi.name == model:
            return describe(c, mi)
    raise ModelNotFound(f"The model `{model}` does not exist or is not served here", param="model")
