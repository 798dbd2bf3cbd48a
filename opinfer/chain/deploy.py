"""Deploy and wire the protocol with web3 from brownie's artifacts.

Mirrors scripts/deploy.py (used by brownie tests) for services and the
devnet, which do not run inside brownie."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from web3 import Web3

from opinfer.chain import artifacts
from opinfer.chain.sender import TxSender


@dataclass(frozen=True)
class ProtocolParams:
    """Deployment parameters.

    Clocks: a node builds one dispute trace at a time, so a game opened while
    k other games against the same node are open gives the node
    `clock_budget + k * trace_budget`. Set `trace_s` to the measured time to
    build the trace of the longest job the models allow on the slowest node
    you accept (docs/protocol.md, "Clocks": about 205 s for a 1,024-position
    SmolLM2 job on 2 cores); `deploy` refuses a `trace_budget` below it, and a
    `clock_budget` that leaves less than `move_margin_s` after it for the
    game's moves. 0 = not measured (toy programs, short-job devnets)."""

    min_stake: int = 10**18
    challenge_window: int = 600
    clock_budget: int = 300
    arity: int = 4
    challenge_bond: int = 10**17
    challenger_reward_bps: int = 5_000
    unbonding_delay: int = 0  # 0: window + 2 * clock + 60
    trace_budget: int = 300
    trace_s: float = 0.0
    move_margin_s: int = 60

    def delay(self) -> int:
        return self.unbonding_delay or self.challenge_window + 2 * self.clock_budget + 60

    def check_trace_time(self, trace_s: float | None = None) -> None:
        """Raise ValueError when the clocks do not cover a measured trace time."""
        t = self.trace_s if trace_s is None else trace_s
        if t <= 0:
            return
        if self.trace_budget < t:
            raise ValueError(f"trace_budget {self.trace_budget} s is below the measured trace time {t:.0f} s: "
                             "a node with concurrent games would lose the later ones on time")
        if self.clock_budget < t + self.move_margin_s:
            raise ValueError(f"clock_budget {self.clock_budget} s leaves less than {self.move_margin_s} s for the "
                             f"moves after a {t:.0f} s trace")


@dataclass
class Deployment:
    addresses: dict[str, str]
    params: ProtocolParams
    chain_id: int
    contracts: dict = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {"chain_id": self.chain_id, "contracts": self.addresses, "params": asdict(self.params)}


def contract(w3: Web3, name: str, address: str, build_dir=None):
    """A deployed protocol contract, with its shipped ABI (or the one compiled in build_dir)."""
    abi = artifacts.abi(name) if build_dir is None else artifacts.load(name, build_dir).abi
    return w3.eth.contract(address=address, abi=abi)


def deploy(w3: Web3, sender: TxSender, params: ProtocolParams = ProtocolParams(), treasury: str | None = None,
           coordinators: tuple[str, ...] = (), build_dir=artifacts.DEFAULT_BUILD) -> Deployment:
    params.check_trace_time()
    art = {name: artifacts.load(name, build_dir) for name in artifacts.CONTRACTS}
    treasury = treasury or sender.address
    a = {}
    a["StakeManager"] = sender.deploy(art["StakeManager"].abi, art["StakeManager"].bytecode, params.min_stake,
                                      params.delay(), params.challenger_reward_bps, treasury)
    a["ModelRegistry"] = sender.deploy(art["ModelRegistry"].abi, art["ModelRegistry"].bytecode, a["StakeManager"])
    a["ResultRollup"] = sender.deploy(art["ResultRollup"].abi, art["ResultRollup"].bytecode, a["StakeManager"],
                                      a["ModelRegistry"], params.challenge_window)
    a["ElementRules"] = sender.deploy(art["ElementRules"].abi, art["ElementRules"].bytecode)
    a["DecoderOps"] = sender.deploy(art["DecoderOps"].abi, art["DecoderOps"].bytecode, a["ElementRules"])
    a["StepVerifier"] = sender.deploy(art["StepVerifier"].abi, art["StepVerifier"].bytecode, a["ElementRules"],
                                      a["DecoderOps"])
    a["DisputeGame"] = sender.deploy(art["DisputeGame"].abi, art["DisputeGame"].bytecode, a["StakeManager"],
                                     a["ResultRollup"], a["ModelRegistry"], a["StepVerifier"], params.arity,
                                     params.clock_budget, params.trace_budget, params.challenge_bond)
    c = {name: w3.eth.contract(address=addr, abi=art[name].abi) for name, addr in a.items()}
    sender.call(c["StakeManager"].functions.set_dispute_game(a["DisputeGame"]))
    sender.call(c["ResultRollup"].functions.set_dispute_game(a["DisputeGame"]))
    for coordinator in coordinators:
        sender.call(c["ResultRollup"].functions.set_coordinator(coordinator, True))
    return Deployment(a, params, w3.eth.chain_id, c)


def register_program(sender: TxSender, registry, program, price_wei: int) -> int:
    """Register a model program (its model root and ops per step) and return its id."""
    sender.call(registry.functions.register_model(program.name, program.model_root, program.num_ops, price_wei))
    return registry.functions.model_id_by_name(program.name).call()
