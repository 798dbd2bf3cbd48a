"""The explorer: a page served at /explorer (static files in static/, no build
step) and the read-only JSON it polls (coordinator/routes/explorer.py).

- events.py: the protocol's events (batches, games, stakes) read from the
  chain incrementally and kept in memory, with block times and tx hashes;
- games.py: pure logic turning a game's events into moves and the picture of
  its bisection narrowing (op range, tensor, chunk, element);
- views.py: the JSON views, from the coordinator's database, its node pool
  and the event index.

What the page must not take on the coordinator's word (inclusion proofs, leaf
status, a batch's root and deadline) it reads from the chain itself, over the
RPC URL given by /v1/explorer/config."""
