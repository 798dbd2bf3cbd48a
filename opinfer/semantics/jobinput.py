"""Job input bytes and the input tensor T_0 they define.

A job's input is what the coordinator posts on-chain with the leaf, so a
challenger needs nothing else and the contract can check the input tensor
against the bytes (input binding). The bytes are big-endian uint16 words:

    version 1: [1, n_tokens L, max_tokens M, temperature_milli, top_p_q - 1,
                seed (4 words, most significant first), S, stop words (S), tokens (L)]
    version 2: [2, L, M, temperature_milli, top_p_q - 1, seed (4), S, stop words (S),
                presence_q, frequency_q, B, (token id, bias_q) x B, tokens (L)]

Stop words hold token-level stop sequences, each sequence followed by the
word 0xFFFF. Version 2 adds the sampler's penalties: presence_q and
frequency_q at 2^-12 of a logit and each logit bias at 2^-8, as int16 two's
complement words (opinfer.semantics.elements.penalty); a job without penalties
or bias is written as version 1, so every earlier job keeps its bytes and
roots. T_0 is one row: the words as integers, so element j of T_0 is word j
(StepVerifier.input_tensor_root rebuilds its root from the bytes); the
tokens start at tokens_at = 10 + S (version 1) or 13 + S + 2B (version 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from opinfer.errors import CommitmentError

VERSION = 1                 # no penalties
VERSION_PENALTIES = 2       # presence / frequency penalties and logit bias
HEADER_WORDS = 10           # through S
PENALTY_WORDS = 3           # presence_q, frequency_q, B (version 2, after the stop words)
SEPARATOR = 0xFFFF
MAX_WORDS = 2048            # one tensor row on-chain (StepVerifier MAX_ROW)
TOKENS_AT = HEADER_WORDS    # plus S (and, in version 2, 3 + 2B)
INT16 = (-(1 << 15), (1 << 15) - 1)


def _signed(word: int) -> int:
    return word - (1 << 16) if word >= 1 << 15 else word


@dataclass(frozen=True)
class JobInput:
    tokens: tuple[int, ...]
    max_tokens: int = 0
    temperature_milli: int = 0
    top_p_q: int = 65536
    seed: int = 0
    stop_sequences: tuple[tuple[int, ...], ...] = field(default=())
    presence_q: int = 0
    frequency_q: int = 0
    logit_bias: tuple[tuple[int, int], ...] = field(default=())
    # 1 or 2; None: 2 when the job has a penalty or a bias, else 1 (from_bytes keeps what it read)
    version: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "logit_bias", tuple((int(t), int(b)) for t, b in self.logit_bias))
        penalised = bool(self.presence_q or self.frequency_q or self.logit_bias)
        if self.version is None:
            object.__setattr__(self, "version", VERSION_PENALTIES if penalised else VERSION)
        checks = [
            (len(self.tokens) >= 1, "a job needs at least one token"),
            (all(0 <= t < SEPARATOR for t in self.tokens), "token ids must be in [0, 65535)"),
            (0 <= self.max_tokens < 1 << 16, "max_tokens must be in [0, 65535]"),
            (0 <= self.temperature_milli < 1 << 16, "temperature_milli must be in [0, 65535]"),
            (1 <= self.top_p_q <= 1 << 16, "top_p_q must be in [1, 65536]"),
            (0 <= self.seed < 1 << 64, "seed must be in [0, 2^64)"),
            (all(s and all(0 <= t < SEPARATOR for t in s) for s in self.stop_sequences),
             "stop sequences must be non-empty token id lists"),
            (self.version in (VERSION, VERSION_PENALTIES), f"unknown job input version {self.version}"),
            (self.version == VERSION_PENALTIES or not penalised, "penalties and logit bias need version 2"),
            (all(INT16[0] <= v <= INT16[1] for v in (self.presence_q, self.frequency_q)),
             "presence_q and frequency_q must be int16"),
            (all(0 <= t <= 0xFFFF and INT16[0] <= b <= INT16[1] for t, b in self.logit_bias),
             "logit_bias entries must be (uint16 token id, int16 bias)"),
        ]
        for ok, message in checks:
            if not ok:
                raise CommitmentError(message)
        if len(self.words()) > MAX_WORDS:
            raise CommitmentError(f"job input too long: {len(self.words())} words > {MAX_WORDS}")

    def stop_words(self) -> list[int]:
        out: list[int] = []
        for seq in self.stop_sequences:
            out += list(seq) + [SEPARATOR]
        return out

    def penalty_words(self) -> list[int]:
        """Version 2's words after the stop words: presence_q, frequency_q, B, then the bias entries."""
        if self.version == VERSION:
            return []
        out = [self.presence_q & 0xFFFF, self.frequency_q & 0xFFFF, len(self.logit_bias)]
        for token, bias in self.logit_bias:
            out += [token, bias & 0xFFFF]
        return out

    def words(self) -> list[int]:
        stop = self.stop_words()
        seed = [(self.seed >> (16 * (3 - i))) & 0xFFFF for i in range(4)]
        return ([self.version, len(self.tokens), self.max_tokens, self.temperature_milli, self.top_p_q - 1]
                + seed + [len(stop)] + stop + self.penalty_words() + list(self.tokens))

    def to_bytes(self) -> bytes:
        return np.asarray(self.words(), dtype=">u2").tobytes()

    def tensor(self) -> np.ndarray:
        return np.asarray(self.words(), dtype=np.int64).reshape(1, -1)

    @property
    def tokens_at(self) -> int:
        """Index in T_0 of the first token."""
        return TOKENS_AT + len(self.stop_words()) + len(self.penalty_words())

    @classmethod
    def from_bytes(cls, data: bytes) -> "JobInput":
        """The job input the bytes hold; accepts what StepVerifier.job_shape's
        layout check accepts (opinfer.semantics.program.job_shape), no more."""
        if len(data) % 2 or len(data) < 2 * HEADER_WORDS:
            raise CommitmentError("job input must be an even number of bytes holding at least the header")
        w = [int(v) for v in np.frombuffer(data, dtype=">u2")]
        if w[0] not in (VERSION, VERSION_PENALTIES):
            raise CommitmentError(f"unknown job input version {w[0]}")
        n, s = w[1], w[9]
        at = HEADER_WORDS + s                  # after the stop words
        presence = frequency = 0
        bias: list[tuple[int, int]] = []
        if w[0] == VERSION_PENALTIES:
            if len(w) < at + PENALTY_WORDS:
                raise CommitmentError("job input too short for its penalty words")
            presence, frequency, b = _signed(w[at]), _signed(w[at + 1]), w[at + 2]
            bias = [(w[at + 3 + 2 * k], _signed(w[at + 4 + 2 * k])) for k in range(b)
                    if at + 4 + 2 * k < len(w)]
            at += PENALTY_WORDS + 2 * b
        if len(w) != at + n:
            raise CommitmentError("job input length does not match its token, stop and bias counts")
        stop_words, seqs, cur = w[HEADER_WORDS:HEADER_WORDS + s], [], []
        for t in stop_words:
            if t == SEPARATOR:
                seqs.append(tuple(cur))
                cur = []
            else:
                cur.append(t)
        if cur:
            raise CommitmentError("unterminated stop sequence")
        seed = (w[5] << 48) | (w[6] << 32) | (w[7] << 16) | w[8]
        return cls(tuple(w[at:]), w[2], w[3], w[4] + 1, seed, tuple(seqs), presence, frequency, tuple(bias), w[0])


# ---------------------------------------------------------------- requests -> job inputs
# One encoding of an OpenAI-style request into a job input, used by the
# coordinator (to build the job) and by the SDK (to check that the job it is
# shown is the request it sent). `tok` is the requested chat model's tokenizer
# (its spec's tokenizer(), e.g. opinfer.models.smollm2.tokenizer); nothing here imports one.

def chat_messages(messages) -> list[tuple[str, str]]:
    """(role, text) pairs from OpenAI messages (dicts or objects with role and
    content: a string, a list of {"type": "text", "text"} parts, or None);
    role "developer" is the system role."""
    out = []
    for msg in messages:
        role = msg["role"] if isinstance(msg, dict) else msg.role
        content = msg.get("content") if isinstance(msg, dict) else msg.content
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        else:
            text = "".join(part["text"] if isinstance(part, dict) else part.text for part in content)
        out.append(("system" if role == "developer" else role, text))
    return out


def chat_prompt_ids(tok, messages: list[tuple[str, str]]) -> list[int]:
    """ChatML ids with message text encoded as plain text, so a message
    cannot forge role markers by containing "<|im_end|>"; a default system
    message first when the caller gave none. A model whose chat template is
    not ChatML gives its own encoding: its tokenizer's `chat_prompt_ids(messages)`
    (the same rule: message text as plain text), and `end_of_turn_id`."""
    if hasattr(tok, "chat_prompt_ids"):
        return [int(t) for t in tok.chat_prompt_ids(messages)]
    start, end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    if not messages or messages[0][0] != "system":
        messages = [("system", tok.default_system_prompt)] + list(messages)
    ids: list[int] = []
    for role, content in messages:
        ids += [start] + tok.encode_ordinary(f"{role}\n{content}") + [end] + tok.encode_ordinary("\n")
    return ids + [start] + tok.encode_ordinary("assistant\n")


def chat_stop_sequences(tok, stops) -> tuple[tuple[int, ...], ...]:
    """The end-of-turn token, then each stop string's ids."""
    stops = stops if isinstance(stops, list) else ([stops] if stops else [])
    end = getattr(tok, "end_of_turn_id", None)
    end = tok.token_to_id("<|im_end|>") if end is None else end
    return ((end,),) + tuple(tuple(tok.encode_ordinary(s)) for s in stops)


def completion_stop_sequences(tok, stops) -> tuple[tuple[int, ...], ...]:
    """Text completion (POST /v1/completions): the model's end-of-sequence
    token (and <|endoftext|> where that is another token), then each stop
    string's ids. The prompt is plain text: no chat template."""
    ends = [tok.eos_id] + ([tok.endoftext_id] if getattr(tok, "endoftext_id", tok.eos_id) != tok.eos_id else [])
    stops = stops if isinstance(stops, list) else ([stops] if stops else [])
    return tuple((e,) for e in ends) + tuple(tuple(tok.encode_ordinary(s)) for s in stops)


SEED_MASK = (1 << 64) - 1


def choice_seed(seed: int, index: int) -> int:
    """The seed of choice `index` of a request with n > 1 choices (each choice
    is a job of its own): choice 0 keeps the request's seed (so n=1 and the
    first of n are the same job); choice i > 0 takes the top 64 bits of
    keccak256(abi.encode(uint256 seed, uint256 i)): different draws per
    choice, and anyone can recompute them from the request's seed."""
    if index == 0:
        return seed
    from eth_utils import keccak

    digest = keccak(int(seed).to_bytes(32, "big") + int(index).to_bytes(32, "big"))
    return int.from_bytes(digest[:8], "big") & SEED_MASK
