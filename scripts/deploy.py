"""Deploy and wire the opinfer contracts with brownie.

`brownie run deploy` deploys to the active network with the default
ProtocolParams;
tests and other scripts call `deploy_system` with their own parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from brownie import (DecoderOps, DisputeGame, ElementRules, ModelRegistry, ResultRollup, StakeManager, StepVerifier,
                     accounts)

from opinfer.chain.deploy import ProtocolParams as DeployParams


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
    stake = StakeManager.deploy(params.min_stake, params.delay(), params.challenger_reward_bps, treasury, tx)
    registry = ModelRegistry.deploy(stake, tx)
    rollup = ResultRollup.deploy(stake, registry, params.challenge_window, tx)
    rules = ElementRules.deploy(tx)
    decoder = DecoderOps.deploy(rules, tx)
    verifier = StepVerifier.deploy(rules, decoder, tx)
    game = DisputeGame.deploy(stake, rollup, registry, verifier, params.arity, params.clock_budget,
                              params.trace_budget, params.challenge_bond, tx)
    stake.set_dispute_game(game, tx)
    rollup.set_dispute_game(game, tx)
    for coordinator in coordinators:
        rollup.set_coordinator(coordinator, True, tx)
    return System(stake, registry, rollup, verifier, game, params, decoder)


def main():
    deployer = accounts[0]
    system = deploy_system(deployer, deployer, coordinators=[deployer])
    for name in ("stake", "registry", "rollup", "verifier", "game"):
        print(f"{name}: {getattr(system, name).address}")
