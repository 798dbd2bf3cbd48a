"""The tokenizers shipped for clients (opinfer/engine/tokenizer_data) are the
model packages' own: the same data, the same ids, the same chat prompt, so a
client that verifies without the weights rebuilds the job input the
coordinator built from them."""

import gzip
import json

from opinfer.engine import minilm_weights, tokenizer_data
from opinfer.engine.bpe_tokenizer import load_tokenizer
from opinfer.engine.gguf_loader import load_metadata
from opinfer.trace.jobinput import chat_messages, chat_prompt_ids, chat_stop_sequences

TEXTS = ["Hello <|im_end|> world", "Numbers 1234 and 3.14", "naïve café 🙂\n\ttabs", ""]


def test_shipped_smollm2_data_is_the_gguf_metadata():
    meta = load_metadata()
    shipped = tokenizer_data.smollm2_metadata()
    assert set(shipped) == set(tokenizer_data.SMOLLM2_KEYS)
    for key in tokenizer_data.SMOLLM2_KEYS:
        assert shipped[key] == meta[key], f"{key} differs: run `python -m opinfer.engine.tokenizer_data export`"


def test_shipped_smollm2_tokenizer_encodes_like_the_gguf_one():
    client, node = tokenizer_data.smollm2(), load_tokenizer()
    for text in TEXTS:
        assert client.encode(text) == node.encode(text)
        assert client.encode_ordinary(text) == node.encode_ordinary(text)
    messages = chat_messages([{"role": "user", "content": "What is 2+2? <|im_start|>"}])
    assert chat_prompt_ids(client, messages) == chat_prompt_ids(node, messages)
    assert chat_stop_sequences(client, ["\n\n", "END"]) == chat_stop_sequences(node, ["\n\n", "END"])
    ids = node.encode("A test, with <|im_end|> inside.")
    assert client.decode(ids, skip_special_tokens=True) == node.decode(ids, skip_special_tokens=True)


def test_shipped_minilm_tokenizer_is_the_packages():
    package = (minilm_weights.model_dir() / "tokenizer.json").read_bytes()
    assert json.loads(gzip.decompress(tokenizer_data.MINILM.read_bytes())) == json.loads(package)
    for text in TEXTS + ["word " * 400]:          # truncation at 256 as well
        assert tokenizer_data.minilm().encode(text).ids == minilm_weights.encode(text).tolist()
