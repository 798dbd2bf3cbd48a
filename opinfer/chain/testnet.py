"""One local protocol network, built the same way for every user of it: the
node's, challenger's, coordinator's and integration tests, the benches,
coordinator/local.py and the devnet.

`ProtocolNet.start()` runs anvil, deploys the protocol through the one
deploy path (opinfer.chain.deploy.deploy), names anvil's development
accounts by role, and lets the caller register models, fund, stake and bond
roles, announce nodes and post batches in one line each. Anvil's development
keys are public: local networks only."""

from __future__ import annotations

from dataclasses import dataclass, field

from web3 import HTTPProvider, Web3

from opinfer.chain.anvil import Anvil, dev_keys
from opinfer.chain.client import ProtocolClient
from opinfer.chain.deploy import Deployment, ProtocolParams, deploy, register_program
from opinfer.chain.sender import TxSender
from opinfer.trace.tables import LeafStatus

#: the roles every network names first; callers append their own (nodes, challengers)
BASE_ROLES = ("deployer", "coordinator", "challenger")
STAKE_WEI = 2 * 10**18
BOND_WEI = 10**18


@dataclass
class ProtocolNet:
    """A suite's network: subclass it with its ROLES and PARAMS and set up in
    `__post_init__` (runs inside `start`: a failure there stops anvil)."""

    ROLES = BASE_ROLES
    PARAMS = ProtocolParams()

    anvil: Anvil
    w3: Web3
    deployment: Deployment
    keys: dict[str, str]                      # role -> private key
    senders: dict[str, TxSender]
    models: dict[str, int] = field(default_factory=dict)   # name -> model id

    def __post_init__(self) -> None:
        """A suite's own set-up (the base has none)."""

    @classmethod
    def start(cls, roles: tuple[str, ...] | None = None, params: ProtocolParams | None = None, *,
              port: int | None = None, accounts: int = 0, hardfork: str | None = None, tied: bool = False,
              coordinators: tuple[str, ...] = ("coordinator",)) -> "ProtocolNet":
        """Anvil with the protocol deployed by roles[0] (the owner and treasury); `coordinators`
        (roles) may post batches. tied: anvil dies with this process (a supervisor's chain)."""
        roles, params = roles or cls.ROLES, params or cls.PARAMS
        anvil = Anvil(port=port, accounts=max(accounts, len(roles), 10), hardfork=hardfork, tied=tied).start()
        try:
            w3 = Web3(HTTPProvider(anvil.url))
            keys = dict(zip(roles, dev_keys(len(roles)), strict=True))
            senders = {role: TxSender(w3, key) for role, key in keys.items()}
            d = deploy(w3, senders[roles[0]], params, coordinators=tuple(senders[r].address for r in coordinators))
            return cls(anvil, w3, d, keys, senders)
        except BaseException:
            anvil.stop()
            raise

    # ------------------------------------------------------------ where things are

    @property
    def url(self) -> str:
        return self.anvil.url

    @property
    def chain_id(self) -> int:
        return self.deployment.chain_id

    @property
    def params(self) -> ProtocolParams:
        return self.deployment.params

    @property
    def addresses(self) -> dict[str, str]:
        return self.deployment.addresses

    @property
    def contracts(self) -> dict:
        return self.deployment.contracts

    c = contracts

    @property
    def d(self) -> Deployment:
        return self.deployment

    @property
    def rollup(self) -> str:
        return self.addresses["ResultRollup"]

    @property
    def addr(self) -> dict[str, str]:
        return {role: s.address for role, s in self.senders.items()}

    @property
    def owner(self) -> TxSender:
        """The deployer: owner of the contracts (the first role)."""
        return next(iter(self.senders.values()))

    def client(self) -> ProtocolClient:
        """A read-only protocol client on this network."""
        return ProtocolClient(self.w3, self.rollup)

    def sender(self, role: str) -> TxSender:
        """A fresh sender for `role` (its own nonce tracking: a service's own signer)."""
        return TxSender(self.w3, self.keys[role])

    # ------------------------------------------------------------ setting up

    def register(self, program, price_wei: int = 0, role: str | None = None) -> int:
        """Register a model (anything with name, model_root, num_ops) and return its id."""
        owner = self.senders[role] if role else self.owner
        model_id = register_program(owner, self.contracts["ModelRegistry"], program, price_wei)
        self.models[program.name] = model_id
        return model_id

    def stake(self, role: str, wei: int = STAKE_WEI) -> None:
        self.senders[role].call(self.contracts["StakeManager"].functions.stake_eth(), value=wei)

    def bond(self, role: str, wei: int = BOND_WEI) -> None:
        self.senders[role].call(self.contracts["StakeManager"].functions.deposit_bond(), value=wei)

    def announce(self, role: str, endpoint: str, model_ids=None) -> None:
        ids = list(self.models.values()) if model_ids is None else list(model_ids)
        self.senders[role].call(self.contracts["ModelRegistry"].functions.announce(endpoint, ids))

    # ------------------------------------------------------------ using it

    def post(self, leaves, role: str = "coordinator") -> int:
        """Post a batch of leaves (a direct post_batch call); returns its batch id."""
        from opinfer.trace.leaf import Batch

        rollup = self.contracts["ResultRollup"]
        self.senders[role].call(rollup.functions.post_batch(*Batch(leaves).calldata))
        return rollup.functions.batch_count().call()

    def forwarder(self, owner: str = "coordinator"):
        """A contract wallet owned by `owner`, allowed to post batches (test-only
        contracts/test/Forwarder.vy, compiled into build/: never part of a deployment)."""
        from opinfer.chain import artifacts
        from opinfer.chain.client import contract

        art = artifacts.load("Forwarder")
        address = self.senders[owner].deploy(art.abi, art.bytecode)
        self.owner.call(self.contracts["ResultRollup"].functions.set_coordinator(address, True))
        return contract(self.w3, "Forwarder", address, art.path.parent)

    def post_via(self, forwarder, leaves, owner: str = "coordinator") -> int:
        """Post a batch through `forwarder`: the transaction calls the forwarder, which calls post_batch."""
        from opinfer.trace.leaf import Batch

        rollup = self.contracts["ResultRollup"]
        data = rollup.encode_abi("post_batch", args=Batch(leaves).calldata)
        self.senders[owner].call(forwarder.functions.forward(rollup.address, data))
        return rollup.functions.batch_count().call()

    def leaf_status(self, batch_id: int, index: int) -> LeafStatus:
        return LeafStatus(self.contracts["ResultRollup"].functions.leaf_status(batch_id, index).call())

    def slashable(self, role: str) -> int:
        return self.contracts["StakeManager"].functions.slashable(self.addr[role]).call()

    def time_travel(self, seconds: int) -> None:
        self.w3.provider.make_request("evm_increaseTime", [seconds])
        self.w3.provider.make_request("evm_mine", [])

    def interval_mining(self, seconds: int = 1) -> None:
        """A block every `seconds` from now on: chain time moves without transactions."""
        self.w3.provider.make_request("evm_setIntervalMining", [seconds])

    def stop(self) -> None:
        self.anvil.stop()

    def __enter__(self) -> "ProtocolNet":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
