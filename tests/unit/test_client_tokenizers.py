"""The tokenizers shipped in the model folders (opinfer/models/<model>/
tokenizer.json.gz, what the specs' tokenizer() and so the SDK and the
coordinator use) are the model packages' own: the same data, the same ids,
the same chat prompt, so a client that verifies without the weights
rebuilds the job input the coordinator built. After a model package
changes: `python -m opinfer.models.shipped export`."""

import json

from opinfer import models
from opinfer.models.minilm import weights as minilm_weights
from opinfer.models.smollm2.tokenizer import load_tokenizer
from opinfer.models.smollm2.gguf import load_metadata
from opinfer.models import shipped
from opinfer.models.minilm import parts as minilm_parts
from opinfer.models.smollm2 import parts as smollm2_parts
from opinfer.semantics.jobinput import chat_messages, chat_prompt_ids, chat_stop_sequences

TEXTS = ["Hello <|im_end|> world", "Numbers 1234 and 3.14", "naïve café 🙂\n\ttabs", ""]


def test_every_model_ships_its_tokenizer():
    for spec in models.specs():
        assert (spec.parts.TOKENIZER_FILE.parent / "tokenizer.json.gz").is_file(), spec.name
        assert spec.tokenizer() is not None


def test_shipped_smollm2_data_is_the_gguf_metadata():
    meta = load_metadata()
    data = smollm2_parts.tokenizer_metadata()
    assert set(data) == set(smollm2_parts.TOKENIZER_KEYS)
    for key in smollm2_parts.TOKENIZER_KEYS:
        assert data[key] == meta[key], f"{key} differs: run `python -m opinfer.models.shipped export`"


def test_shipped_smollm2_tokenizer_encodes_like_the_gguf_one():
    client, node = models.get("smollm2-135m-instruct").tokenizer(), load_tokenizer()
    for text in TEXTS:
        assert client.encode(text) == node.encode(text)
        assert client.encode_ordinary(text) == node.encode_ordinary(text)
    messages = chat_messages([{"role": "user", "content": "What is 2+2? <|im_start|>"}])
    assert chat_prompt_ids(client, messages) == chat_prompt_ids(node, messages)
    assert chat_stop_sequences(client, ["\n\n", "END"]) == chat_stop_sequences(node, ["\n\n", "END"])
    assert client.chat_template == node.chat_template and client.eos_id == node.eos_id
    ids = node.encode("A test, with <|im_end|> inside.")
    assert client.decode(ids, skip_special_tokens=True) == node.decode(ids, skip_special_tokens=True)


def test_shipped_minilm_tokenizer_is_the_packages():
    package = (minilm_weights.model_dir() / "tokenizer.json").read_bytes()
    assert json.loads(shipped.read(minilm_parts.TOKENIZER_FILE)) == json.loads(package)
    spec = models.get("all-minilm-l6-v2")
    for text in TEXTS + ["word " * 400]:          # truncation as the engine's copy does it
        assert spec.encode(text) == minilm_weights.encode(text).tolist()
