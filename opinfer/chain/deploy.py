"""Deploy and wire the protocol with web3 from the compiled artifacts.

`constructors` and `wiring` say once how the protocol is put together;
`deploy` runs them with web3 (services, the devnet, every test network:
opinfer.chain.testnet) and scripts/deploy.py runs the same steps with
brownie for the contract suite."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from web3 import Web3

from opinfer.chain import artifacts
from opinfer.chain.client import contract  # noqa: F401 - re-exported (the services' older import path)
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


@dataclass(frozen=True)
class Ref:
    """A constructor or wiring argument that is another protocol contract's address."""
    name: str


def constructors(params: ProtocolParams, treasury) -> list[tuple[str, tuple]]:
    """The protocol's contracts in deployment order, each with its constructor arguments.
    The one definition of how the protocol is put together: `deploy` (web3: services,
    devnet, tests, benches) and scripts/deploy.py (brownie: the contract suite) both run it."""
    return [
        ("StakeManager", (params.min_stake, params.delay(), params.challenger_reward_bps, treasury)),
        ("ModelRegistry", (Ref("StakeManager"),)),
        ("ResultRollup", (Ref("StakeManager"), Ref("ModelRegistry"), params.challenge_window)),
        ("ElementRules", ()),
        ("DecoderOps", (Ref("ElementRules"),)),
        ("StepVerifier", (Ref("ElementRules"), Ref("DecoderOps"))),
        ("DisputeGame", (Ref("StakeManager"), Ref("ResultRollup"), Ref("ModelRegistry"), Ref("StepVerifier"),
                         params.arity, params.clock_budget, params.trace_budget, params.challenge_bond)),
    ]


def wiring(coordinators=()) -> list[tuple[str, str, tuple]]:
    """The calls that connect the deployed contracts: (contract, function, arguments)."""
    return ([("StakeManager", "set_dispute_game", (Ref("DisputeGame"),)),
             ("ResultRollup", "set_dispute_game", (Ref("DisputeGame"),))]
            + [("ResultRollup", "set_coordinator", (c, True)) for c in coordinators])


def resolve(args: tuple, deployed: dict) -> tuple:
    return tuple(deployed[a.name] if isinstance(a, Ref) else a for a in args)


def deploy(w3: Web3, sender: TxSender, params: ProtocolParams = ProtocolParams(), treasury: str | None = None,
           coordinators: tuple[str, ...] = (), build_dir=artifacts.DEFAULT_BUILD) -> Deployment:
    params.check_trace_time()
    art = {name: artifacts.load(name, build_dir) for name in artifacts.CONTRACTS}
    a: dict[str, str] = {}
    for name, args in constructors(params, treasury or sender.address):
        a[name] = sender.deploy(art[name].abi, art[name].bytecode, *resolve(args, a))
    c = {name: w3.eth.contract(address=addr, abi=art[name].abi) for name, addr in a.items()}
    for name, fn, args in wiring(coordinators):
        sender.call(getattr(c[name].functions, fn)(*resolve(args, a)))
    return Deployment(a, params, w3.eth.chain_id, c)


def register_program(sender: TxSender, registry, program, price_wei: int) -> int:
    """Register a model program (its model root and ops per step) and return its id."""
    sender.call(registry.functions.register_model(program.name, program.model_root, program.num_ops, price_wei))
    return registry.functions.model_id_by_name(program.name).call()
