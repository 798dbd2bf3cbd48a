"""A fake chain for the challenger's logic tests: batches, models and games
held in memory, no RPC. Only what challenger.service calls."""

from __future__ import annotations

from types import SimpleNamespace

from challenger.chain import BatchEvent, ModelInfo
from opinfer.semantics import merkle
from opinfer.trace import player
from opinfer.trace.leaf import Batch, ResultLeaf
from opinfer.trace.outputs import input_root, tensor_root

ME = "0x" + "c" * 40
HONEST, CHEAT = "0x" + "1" * 40, "0x" + "2" * 40


class FakeChain:
    chain_id = 31337
    arity, arity_bits = 4, 2

    def __init__(self, models: dict[int, ModelInfo]):
        self.models = models
        self.rollup = SimpleNamespace(address="0x" + "a" * 40)
        self.address = ME
        self.now = 1_000
        self.block = 0
        self.events: list[BatchEvent] = []
        self.batches: dict[int, Batch] = {}
        self.slashed: list[tuple[int, str]] = []
        self.games: dict[int, dict] = {}
        self.challenged: dict[tuple[int, int], int] = {}
        self.sent: list[player.Move] = []
        self.bond, self.need, self.deposits, self.owed = 10**18, 10**17, [], 0
        self.fail_load: dict[int, type] = {}  # batch id -> exception to raise
        self.loads = 0

    # chain view
    def head(self):
        return self.block

    def timestamp(self, block="latest"):
        return self.now

    def block_hash(self, number):
        return merkle.keccak(number.to_bytes(8, "big")) if 0 <= number <= self.block else None

    def mine(self, n: int = 1, seconds: int = 1):
        self.block += n
        self.now += seconds

    def post(self, leaves: list[ResultLeaf], window: int = 600) -> int:
        self.mine()
        batch = Batch(leaves)
        batch_id = len(self.batches) + 1
        self.batches[batch_id] = batch
        self.events.append(BatchEvent(batch_id, "0x" + "d" * 40, batch.root, batch.data_hash, len(leaves),
                                      self.now + window, batch_id.to_bytes(32, "big"), self.block,
                                      merkle.keccak(bytes([batch_id]))))
        return batch_id

    def batch_events(self, lo, hi):
        return [e for e in self.events if lo <= e.block_number <= hi]

    def slashed_nodes(self, lo, hi):
        return [node for block, node in self.slashed if lo <= block <= hi]

    def load_batch(self, batch_id, tx_hash):
        self.loads += 1
        if batch_id in self.fail_load:
            raise self.fail_load[batch_id]("injected")
        return self.batches[batch_id]

    def model(self, model_id):
        return self.models[model_id]

    def leaf_signed(self, record):
        return True

    def has_challenged(self, batch_id, index):
        return (batch_id, index) in self.challenged

    def find_game(self, batch_id, index, from_block=0):
        return self.challenged[(batch_id, index)], self.block

    def game(self, gid):
        return self.games[gid]

    def revealed(self, gid, phase, from_block):
        return []

    def challenge_bond(self):
        return self.need

    def free_bond(self):
        return self.bond

    def claimable(self):
        return self.owed

    # chain writes
    def challenge(self, batch, batch_id, index, model_header):
        gid = len(self.games) + 1
        self.challenged[(batch_id, index)] = gid
        self.games[gid] = {"status": player.ACTIVE, "phase": player.OPEN, "last_move_at": self.now,
                           "node_clock": 300, "challenger_clock": 300, "lo": 0, "hi": 4}
        self.bond -= self.need
        return gid, self.block

    def void_forged(self, batch, batch_id, index):
        raise AssertionError("not expected")

    def send(self, move):
        self.sent.append(move)
        return []

    def deposit_bond(self, wei):
        self.deposits.append(wei)
        self.bond += wei

    def claim(self):
        owed, self.owed = self.owed, 0
        return owed


def leaf(program, job, node: str, model_id: int = 1, job_no: int = 0, lie: int = 0) -> ResultLeaf:
    """A leaf for `job`; lie != 0 adds it to the first output element."""
    out = program.run(job)[-1].copy()
    out[0, 0] += lie
    return ResultLeaf(job_no.to_bytes(16, "big"), model_id, input_root(job), tensor_root(out), node,
                      input=job.to_bytes())
