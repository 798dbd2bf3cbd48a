"""Generated token ids -> the text and log-probabilities a client sees.

One path for streamed and whole answers, so a stream's text is the plain
answer's text byte for byte:

- ids become bytes through the model tokenizer's table (token_bytes()) and
  text through an incremental UTF-8 decoder (half of a character waits for its rest);
- tokens that could still become a stop sequence are held back until they
  cannot (a client never sees a stop sequence that is later cut off);
  when the answer ends on a stop sequence, that sequence is dropped, the
  rest is released (opinfer.sdk.verify.shown_text_ids: the same rule).

Log-probabilities are the node's (docs/coordinator.md, "Log-probabilities"):
they describe the committed sampler's distribution but are not part of the
signed leaf; the token ids are."""

from __future__ import annotations

import codecs
import functools


class TokenTable:
    """Each token's bytes (special tokens: none, as decode(skip_special_tokens) shows them),
    as the model's tokenizer gives them (`token_bytes()`: how a model spells bytes is a
    fact of its tokenizer, opinfer/models/<model>/, e.g. byte-level BPE in opinfer/models/bytelevel.py)."""

    def __init__(self, tok):
        special = set(tok.special_ids)
        self.spelling = list(tok.tokens)
        self.raw = list(tok.token_bytes())
        self.special = special

    def token(self, i: int) -> str:
        """The token as a string for logprobs: its text, or the special token's spelling."""
        if i in self.special or not 0 <= i < len(self.raw):
            return self.spelling[i] if 0 <= i < len(self.spelling) else ""
        return self.raw[i].decode("utf-8", errors="replace")

    def token_bytes(self, i: int) -> list[int]:
        if i in self.special:
            return list(self.spelling[i].encode())
        return list(self.raw[i]) if 0 <= i < len(self.raw) else []


@functools.lru_cache(maxsize=4)
def table_for(tok) -> TokenTable:
    return TokenTable(tok)


def shown_count(ids: list[int], finish_reason: str, stops) -> int:
    """How many of the ids are shown: a stop sequence that ended the answer is cut off."""
    if finish_reason == "stop":
        for seq in stops:
            if len(seq) <= len(ids) and tuple(ids[len(ids) - len(seq):]) == tuple(seq):
                return len(ids) - len(seq)
    return len(ids)


class TextStream:
    """push(id, extra) -> [(text, [extra, ...])] released so far; finish(reason) -> the rest.

    `extra` rides along with its token (its logprob entry): released with the
    token, dropped with it when the token belongs to the final stop sequence."""

    def __init__(self, table: TokenTable, stops):
        self.table = table
        self.stops = [tuple(s) for s in stops]
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.ids: list[int] = []
        self.held: list[tuple[int, object]] = []
        self.text = ""

    def _could_stop(self) -> bool:
        held = tuple(i for i, _ in self.held)
        return any(len(s) >= len(held) and s[:len(held)] == held for s in self.stops)

    def _release(self, count: int) -> list[tuple[str, list]]:
        out = []
        for i, extra in self.held[:count]:
            piece = self.decoder.decode(self.table.raw[i] if 0 <= i < len(self.table.raw) else b"")
            self.text += piece
            out.append((piece, [extra] if extra is not None else []))
        del self.held[:count]
        return out

    def push(self, token: int, extra=None) -> list[tuple[str, list]]:
        self.ids.append(token)
        self.held.append((token, extra))
        out = []
        while self.held and not self._could_stop():
            out += self._release(1)
        return out

    def finish(self, finish_reason: str) -> list[tuple[str, list]]:
        keep = shown_count(self.ids, finish_reason, self.stops) - (len(self.ids) - len(self.held))
        out = self._release(max(0, keep))
        self.held.clear()
        tail = self.decoder.decode(b"", final=True)
        if tail:
            self.text += tail
            out.append((tail, []))
        return out


def merge(pieces: list[tuple[str, list]]) -> tuple[str, list]:
    return "".join(p for p, _ in pieces), [e for _, extra in pieces for e in extra]


# ------------------------------------------------------------------ log-probabilities (OpenAI shapes)

def chat_logprob(table: TokenTable, event: dict, top: int) -> dict:
    """One token's entry of choice.logprobs.content."""
    alternatives = [{"token": table.token(t), "logprob": float(lp), "bytes": table.token_bytes(t)}
                    for t, lp in (event.get("top") or [])[:top]]
    return {"token": table.token(event["id"]), "logprob": float(event["logprob"] if event.get("logprob")
                                                                   is not None else float("-inf")),
            "bytes": table.token_bytes(event["id"]), "top_logprobs": alternatives}


def completion_logprobs(table: TokenTable, entries: list[dict], top: int, offset: int) -> dict:
    """choice.logprobs of /v1/completions: tokens, token_logprobs, top_logprobs, text_offset.
    `entries`: {"id", "logprob", "top"} per token (logprob None: the first prompt token)."""
    tokens, lps, tops, offsets = [], [], [], []
    for e in entries:
        text = table.token(e["id"])
        tokens.append(text)
        lps.append(None if e.get("logprob") is None else float(e["logprob"]))
        if e.get("top") is None:
            tops.append(None if e.get("logprob") is None else {text: float(e["logprob"])})
        else:
            tops.append({table.token(t): float(lp) for t, lp in e["top"][:top]})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}
