"""The integer semantics and the op program: the Python twin of the verifier
contracts (StepVerifier, DecoderOps, ElementRules).

quant, elements, blocks: the element rules and their vectorised forms;
ops, decoder_ops: the op classes (RUN and READS per opcode); program, builder:
a program's ops, weights, job limits and model root; jobinput: the job
format (T_0); merkle, tensor: the Merkle layout a model root and a tensor
root commit to. It imports nothing else from opinfer: the engines
(opinfer/engine, opinfer/models) and the dispute side (opinfer/trace) build
on it, never the other way (tests/unit/test_layers.py)."""
