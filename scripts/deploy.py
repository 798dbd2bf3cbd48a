"""Deploy and wire the opinfer contracts with brownie (the contract suite).

The steps are opinfer.chain.deploy's (`constructors`, `wiring`): the same
deployment the services, the devnet and the test networks get from
`opinfer.chain.deploy.deploy`, here sent from brownie's accounts.
`brownie run deploy` deploys to the active network with the default
ProtocolParams; tests call `deploy_system` with their own parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import brownie

from opinfer.chain.deploy import ProtocolParams as DeployParams
from opinfer.chain.deploy import constructors, resolve, wiring


@dataclass
class System:
    stake: object
    registry: object
    rollup: object
    verifier: object
    game: object
    params: DeployParams
    decoder: object = None


def deploy_system(deployer, treasury, params: DeployParams = DeployParams(), coordinators=()) -> System:
    params.check_trace_time()
    tx = {"from": deployer}
    c: dict = {}
    for name, args in constructors(params, treasury):
        c[name] = getattr(brownie, name).deploy(*resolve(args, c), tx)
    for name, fn, args in wiring(coordinators):
        getattr(c[name], fn)(*resolve(args, c), tx)
    return System(c["StakeManager"], c["ModelRegistry"], c["ResultRollup"], c["StepVerifier"], c["DisputeGame"],
                  params, c["DecoderOps"])


def main():
    deployer = brownie.accounts[0]
    system = deploy_system(deployer, deployer, coordinators=[deployer])
    for name in ("stake", "registry", "rollup", "verifier", "game"):
        print(f"{name}: {getattr(system, name).address}")
