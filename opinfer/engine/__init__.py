"""Model engines: the fast integer engines (native kernels, SmolLM2 and MiniLM),
their op programs and built program files, GGUF loading, tokenizers and float
references. Built on opinfer/semantics; never imports opinfer/trace."""
