"""Request bodies of the OpenAI-compatible API.

Unknown fields are rejected (400 naming the field), as OpenAI does; fields
OpenAI defines but opinfer cannot honour are accepted by the schema and
rejected by the service with a message saying why (docs/coordinator.md
lists them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class OpinferOptions(BaseModel):
    """`extra_body={"opinfer": {...}}`."""

    model_config = ConfigDict(extra="forbid")
    consensus: int = Field(1, ge=1, le=16)
    allow_stale: bool = False     # serve a stale cached answer when no node answers
    cache: bool = True            # look the answer up in the response cache


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=64)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    include_obfuscation: bool | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(max_length=256)
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = None
    store: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # Defined by OpenAI, honoured only at their neutral values (see docs).
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    opinfer: OpinferOptions = Field(default_factory=OpinferOptions)


class CompletionRequest(BaseModel):
    """POST /v1/completions (OpenAI's legacy text completion): the prompt is plain text, no chat template."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(max_length=256)
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)     # 0 is refused with a message saying how to score a text
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = Field(None, ge=1)
    best_of: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    user: str | None = Field(None, max_length=256)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    opinfer: OpinferOptions = Field(default_factory=OpinferOptions)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(max_length=256)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = Field(None, max_length=256)
    opinfer: OpinferOptions = Field(default_factory=OpinferOptions)
