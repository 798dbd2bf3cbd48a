"""The llama family of decoder-only GGUF models (llama, Mistral's llama files, qwen2):
a library, not a model folder (no spec.py). A model of the family is a folder whose
spec points at its file (SmolLM2: opinfer/models/smollm2), or a file registered at run
time (`parts.register_gguf`). docs/models.md, "A llama-family GGUF model".

    gguf.py      Config: architecture and hyperparameters from the metadata; refusals
    engine.py    IntLlama (the file's blocks as integers), Session, Decoder: the fast engine
    program.py   build_program / build_from_gguf: the decode step as an op program
    parts.py     a spec's hooks bound to a file (check, engines, program, release)
    fixtures.py  small random-weight GGUF files written with the gguf package (tests)
"""


def build_from_gguf(path, name: str | None = None, positions: int | None = None):
    """The integer program (Program, with its model_root) of a llama-family GGUF file."""
    from opinfer.models.llama.program import build_from_gguf as build

    return build(path, name, positions)


def read_config(path):
    """The file's architecture and hyperparameters (gguf.Config), from its header alone."""
    from opinfer.models.llama.gguf import read_config as read

    return read(path)


__all__ = ["build_from_gguf", "read_config"]
