"""The protocol's events, read from the chain and kept in memory for the explorer.

One eth_getLogs per contract and block range (all of that contract's events
at once), decoded by topic. The index moves forward from its cursor at most
once per `min_interval_s`, however many pages poll it, so viewers do not
multiply the load on the RPC node. It is rebuilt from `from_block` when the
coordinator restarts (nothing here is authoritative: the chain is).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable

from eth_utils import event_abi_to_log_topic
from web3 import Web3

from opinfer.chain.client import contract

MAX_RANGE = 5_000   # blocks per eth_getLogs call (what public RPC providers accept)
GAME_EVENTS = ("GameStarted", "TraceOpened", "Bisected", "Picked", "TensorRevealed", "Descended", "Chosen",
               "ChunkRevealed", "ElementPicked", "StepExecuted", "GameResolved", "GameVoided")
STAKE_EVENTS = ("Staked", "Slashed", "BondAwarded", "BondReleased", "BondDeposited", "DisputeOpened")
ROLLUP_EVENTS = ("BatchPosted", "BatchFinalized", "LeafDisputed", "LeafUndisputed", "LeafInvalidated")


def _plain(value):
    """JSON-safe: bytes as 0x hex, integers beyond 2^53 as decimal strings, lists element-wise."""
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**53 else str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class ChainIndex:
    def __init__(self, w3: Web3, rollup, stake_manager, from_block: int = 0, min_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.w3 = w3
        self.rollup = rollup
        self.stake_manager = stake_manager
        self.game = None                 # DisputeGame, once the rollup names it
        self.cursor = from_block - 1     # last block read
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._last = float("-inf")
        self.lock = threading.Lock()
        self._decoders: dict[tuple[str, bytes], tuple[str, object]] = {}
        self.block_times: dict[int, int] = {}
        self.games: dict[int, list[dict]] = defaultdict(list)       # game id -> its events, in order
        self.by_tx: dict[str, list[dict]] = defaultdict(list)       # tx hash -> events in it
        self.batches: dict[int, list[dict]] = defaultdict(list)     # batch id -> rollup events
        self.stake_events: list[dict] = []
        self._register(rollup, ROLLUP_EVENTS)
        self._register(stake_manager, STAKE_EVENTS)

    def _register(self, c, names) -> None:
        for name in names:
            abi = next(a for a in c.abi if a.get("type") == "event" and a["name"] == name)
            self._decoders[(c.address.lower(), event_abi_to_log_topic(abi))] = (name, getattr(c.events, name)())

    def _ensure_game(self) -> None:
        if self.game is None:
            address = self.rollup.functions.dispute_game().call()
            if int(address, 16):
                self.game = contract(self.w3, "DisputeGame", Web3.to_checksum_address(address))
                self._register(self.game, GAME_EVENTS)

    def refresh(self, force: bool = False) -> None:
        """Read new blocks' events (at most once per min_interval_s unless forced)."""
        with self.lock:
            now = self.clock()
            if not force and now - self._last < self.min_interval_s:
                return
            self._ensure_game()
            head = self.w3.eth.block_number
            addresses = [self.rollup.address, self.stake_manager.address] + ([self.game.address] if self.game else [])
            start = self.cursor + 1
            while start <= head:
                end = min(head, start + MAX_RANGE - 1)
                logs = self.w3.eth.get_logs({"address": addresses, "fromBlock": start, "toBlock": end})
                for log in sorted(logs, key=lambda lg: (lg["blockNumber"], lg["logIndex"])):
                    self._add(log)
                self.cursor = end
                start = end + 1
            self._last = now

    def _add(self, log) -> None:
        if not log["topics"]:
            return
        found = self._decoders.get((log["address"].lower(), bytes(log["topics"][0])))
        if found is None:
            return
        name, decoder = found
        args = decoder.process_log(log)["args"]
        block = log["blockNumber"]
        if block not in self.block_times:
            self.block_times[block] = self.w3.eth.get_block(block)["timestamp"]
        event = {"event": name, "args": {k: _plain(v) for k, v in args.items()},
                 "tx": "0x" + bytes(log["transactionHash"]).hex(), "block": block,
                 "time": self.block_times[block], "log_index": log["logIndex"]}
        self.by_tx[event["tx"]].append(event)
        if name in GAME_EVENTS:
            self.games[args["game_id"]].append(event)
        elif name in ROLLUP_EVENTS:
            self.batches[args["batch_id"]].append(event)
        else:
            self.stake_events.append(event)

    # ------------------------------------------------------------ reads (call refresh first)

    def in_tx(self, tx: str, name: str) -> list[dict]:
        return [e for e in self.by_tx.get(tx.lower(), ()) if e["event"] == name]
