"""Chain access for services: compiled artifacts, a local anvil, deployment
and a transaction sender (web3; brownie is only used to compile and test)."""
