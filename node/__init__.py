"""The inference node: stake, serve, sign and defend results.

Built by the node issue; its dispute answers come from opinfer.trace.player
(node_move) sent through opinfer.chain.game.GameClient."""
