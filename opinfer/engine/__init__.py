"""Model engines: GGUF loading, tokenizer and the float reference for SmolLM2-135M-Instruct."""
