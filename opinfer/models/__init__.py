"""The models this library runs: one folder per model, one registry.

    from opinfer import models
    spec = models.get("smollm2-135m-instruct")     # UnknownModel if not registered
    models.by_kind("embedding")                    # [ModelSpec, ...]
    models.specs()                                 # every registered model
    models.Runtime(spec).run(job)                  # refusal + batched engine pass

Each model is a package here (opinfer/models/<model>/): spec.py (pure data:
name, kind, sizes, limits, sampling defaults) and parts.py (engine, program,
tokenizer factories and the refusal rule). Adding a model is adding a folder
and its module path to BUILTIN below (docs/models.md). Services (node,
challenger, coordinator, devnet, SDK) take every model constant from here."""

from __future__ import annotations

import importlib

from opinfer.models.runtime import Runtime
from opinfer.models.spec import CHAT, EMBEDDING, JobRefused, ModelSpec, Sampling, UnknownModel

# The model folders this library ships: each module defines SPEC.
BUILTIN = ("opinfer.models.minilm.spec", "opinfer.models.smollm2.spec")

_registry: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model (a name can be registered once; the same spec again is a no-op)."""
    known = _registry.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"a different model is already registered as {spec.name!r}")
    _registry[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Drop a model registered at run time (a test's file); unknown names are ignored."""
    _registry.pop(name, None)


def get(name: str) -> ModelSpec:
    try:
        return _registry[name]
    except KeyError:
        raise UnknownModel(f"no model named {name!r} in this library "
                           f"(registered: {', '.join(sorted(_registry))})") from None


def by_kind(kind: str) -> list[ModelSpec]:
    return [s for s in _registry.values() if s.kind == kind]


def specs() -> list[ModelSpec]:
    return list(_registry.values())


def names() -> list[str]:
    return list(_registry)


def sampling_defaults(name: str) -> tuple[float, float]:
    """(temperature, top_p) for a request that leaves them out: the model's recommended
    sampling from its spec (as vLLM applies a model's generation config), OpenAI's
    (1.0, 1.0) for a model without one. Read by the coordinator and the SDK's
    verification alike."""
    spec = _registry.get(name)
    sampling = spec.sampling if spec else None
    return (sampling.temperature, sampling.top_p) if sampling else (1.0, 1.0)


for _module in BUILTIN:
    register(importlib.import_module(_module).SPEC)

__all__ = ["CHAT", "EMBEDDING", "JobRefused", "ModelSpec", "Runtime", "Sampling", "UnknownModel", "by_kind", "get",
           "names", "register", "sampling_defaults", "specs", "unregister"]
