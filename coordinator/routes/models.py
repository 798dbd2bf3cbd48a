"""GET /v1/models, GET /v1/models/{model}."""

from fastapi import APIRouter, Depends

from coordinator.deps import coordinator, principal
from coordinator.errors import ModelNotFound
from coordinator.service import KINDS

router = APIRouter()


def describe(c, mi) -> dict:
    return {"id": mi.name, "object": "model", "created": 0, "owned_by": "opinfer",
            "opinfer": {"model_id": mi.id, "model_root": "0x" + mi.model_root.hex(), "kind": KINDS[mi.name],
                        "num_ops": mi.num_ops, "price_per_1k_tokens_wei": str(mi.price_per_1k),
                        "nodes": len(c.pool.serving(mi.id))}}


@router.get("/v1/models")
def list_models(c=Depends(coordinator), _who=Depends(principal)) -> dict:
    return {"object": "list", "data": [describe(c, mi) for mi in c.catalog.served()]}


@router.get("/v1/models/{model:path}")
def get_model(model: str, c=Depends(coordinator), _who=Depends(principal)) -> dict:
    for mi in c.catalog.served():
        if mi.name == model:
            return describe(c, mi)
    raise ModelNotFound(f"The model `{model}` does not exist or is not served here", param="model")
