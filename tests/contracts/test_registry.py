"""ModelRegistry: models governed by the owner, nodes announced on-chain."""

import brownie
from brownie import accounts

ZERO = b"\x00" * 32


def test_register_and_read_model(system, deployer, program, model_id):
    root, num_ops, price, active = system.registry.get_model(model_id)
    assert bytes(root) == program.model_root and num_ops == program.num_ops and price == 1000 and active
    assert system.registry.model_name(model_id) == "toy-dot"
    assert system.registry.model_id_by_name("toy-dot") == model_id
    assert system.registry.model_active(model_id) and not system.registry.model_active(model_id + 1)


def test_register_rejections(system, deployer, model_id):
    reg = system.registry
    with brownie.reverts("ModelRegistry: caller is not the owner"):
        reg.register_model("x", b"\x01" * 32, 1, 0, {"from": accounts[5]})
    with brownie.reverts("ModelRegistry: empty name"):
        reg.register_model("", b"\x01" * 32, 1, 0, {"from": deployer})
    with brownie.reverts("ModelRegistry: name taken"):
        reg.register_model("toy-dot", b"\x01" * 32, 1, 0, {"from": deployer})
    with brownie.reverts("ModelRegistry: empty model root"):
        reg.register_model("y", ZERO, 1, 0, {"from": deployer})
    with brownie.reverts("ModelRegistry: empty program"):
        reg.register_model("y", b"\x01" * 32, 0, 0, {"from": deployer})
    with brownie.reverts("ModelRegistry: unknown model"):
        reg.get_model(0)
    with brownie.reverts("ModelRegistry: unknown model"):
        reg.get_model(model_id + 1)


def test_price_and_active_flags(system, deployer, model_id):
    reg = system.registry
    tx = reg.set_price(model_id, 77, {"from": deployer})
    assert tx.events["ModelPriceSet"]["price_per_1k"] == 77
    reg.set_active(model_id, False, {"from": deployer})
    assert reg.get_model(model_id)[3] is False
    with brownie.reverts("ModelRegistry: caller is not the owner"):
        reg.set_price(model_id, 1, {"from": accounts[5]})
    with brownie.reverts("ModelRegistry: unknown model"):
        reg.set_active(99, True, {"from": deployer})


def test_ownership_transfer(system, deployer):
    reg = system.registry
    with brownie.reverts("ModelRegistry: owner is zero"):
        reg.transfer_ownership("0x" + "00" * 20, {"from": deployer})
    reg.transfer_ownership(accounts[5], {"from": deployer})
    assert reg.owner() == accounts[5]
    with brownie.reverts("ModelRegistry: caller is not the owner"):
        reg.set_price(1, 1, {"from": deployer})


def test_nodes_announce_update_and_retire(system, staked, nodes, model_id):
    reg = system.registry
    with brownie.reverts("ModelRegistry: node not staked"):
        reg.announce("http://x", [model_id], {"from": accounts[6]})
    with brownie.reverts("ModelRegistry: empty endpoint"):
        reg.announce("", [model_id], {"from": nodes[0]})
    with brownie.reverts("ModelRegistry: no models"):
        reg.announce("http://x", [], {"from": nodes[0]})
    with brownie.reverts("ModelRegistry: unknown model"):
        reg.announce("http://x", [model_id + 7], {"from": nodes[0]})
    for i, node in enumerate(nodes):
        reg.announce(f"http://127.0.0.1:900{i}", [model_id], {"from": node})
    reg.announce("http://127.0.0.1:9100", [model_id], {"from": nodes[0]})  # update, not a new entry
    assert reg.node_count() == 3
    endpoint, models, active = reg.get_node(nodes[0])
    assert endpoint == "http://127.0.0.1:9100" and list(models) == [model_id] and active
    tx = reg.retire({"from": nodes[0]})
    assert "NodeRetired" in tx.events
    assert reg.node_count() == 2
    assert {reg.node_list(0), reg.node_list(1)} == {nodes[1].address, nodes[2].address}
    with brownie.reverts("ModelRegistry: node not listed"):
        reg.get_node(nodes[0])
    with brownie.reverts("ModelRegistry: node not listed"):
        reg.retire({"from": nodes[0]})


def test_nodes_that_left_can_be_pruned_by_anyone(system, staked, nodes, model_id):
    """Issue 14, point 8: the capped node list is not only the nodes' to
    prune. A node that announced and then left (unbonded everything, or was
    slashed) keeps its slot until anyone prunes it; a staked node cannot be
    pruned, so holding every slot costs MAX_NODES active stakes."""
    reg = system.registry
    for i, node in enumerate(nodes):
        reg.announce(f"http://10.0.0.{i + 1}:8000", [model_id], {"from": node})
    with brownie.reverts("ModelRegistry: node still staked"):
        reg.prune(nodes[1], {"from": accounts[7]})
    system.stake.request_unbond(system.stake.stake(nodes[1]), {"from": nodes[1]})
    assert reg.node_count() == 3  # it left, but is still listed
    tx = reg.prune(nodes[1], {"from": accounts[7]})
    assert tx.events["NodePruned"]["node"] == nodes[1].address
    assert reg.node_count() == 2 and {reg.node_list(0), reg.node_list(1)} == {nodes[0].address, nodes[2].address}
    with brownie.reverts("ModelRegistry: node not listed"):
        reg.prune(nodes[1], {"from": accounts[7]})
    with brownie.reverts("ModelRegistry: node not listed"):
        reg.prune(accounts[6], {"from": accounts[7]})


def test_wrong_ops_per_step_is_visible_before_any_job(system, deployer, program, job_input):
    """Issue 14, point 8 (accepted, documented in docs/security.md): the owner
    can register a num_ops that is not the program's; then every challenge of
    that model reverts (the model root commits to the true P). The owner is
    trusted to register the root itself (a wrong root is as harmful), the
    tooling takes P from the program (opinfer.chain.deploy.register_program),
    and anyone can check a registered model before serving or trusting it:
    StepVerifier.job_shape with the registry's (root, num_ops) and the model
    header reverts for a mismatch."""
    from conftest import PROGRAM_HEADER

    reg = system.registry
    mid = reg.register_model("toy-wrong-p", program.model_root, program.num_ops + 1, 0, {"from": deployer}).return_value
    root, num_ops, _, _ = reg.get_model(mid)
    with brownie.reverts("StepVerifier: header does not match model root"):
        system.verifier.job_shape(root, num_ops, PROGRAM_HEADER, job_input.to_bytes())
    ok, _, _, _ = system.verifier.job_shape(root, program.num_ops, PROGRAM_HEADER, job_input.to_bytes())
    assert ok
