"""The inference node: run a job on the deterministic engine and sign its result leaf.

node/app.py serves POST /v1/execute and GET /healthz; node/engines.py maps
model names to the integer engines. Staking and dispute defence join with the
node issue; its dispute answers come from opinfer.trace.player (node_move)
sent through opinfer.chain.game.GameClient."""
