"""The dispute side: a job's trace and its state roots (state.py, decoder_trace.py),
result leaves and batches (leaf.py), output roots (outputs.py), the k-ary
bisection and the player's moves (bisection.py, player.py), the protocol's
shared tables (tables.py) and small test programs (testing.py). It builds on
opinfer/semantics and never imports an engine (tests/unit/test_layers.py).
The Vyper twins live in contracts/ (see their docstrings)."""
