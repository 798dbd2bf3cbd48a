"""The challenger service: watch batches, re-execute, dispute.

Built by the challenger issue; its dispute moves come from
opinfer.trace.player (challenger_move) sent through opinfer.chain.game."""
