# pragma version 0.4.3
"""
@title Forwarder (test only)
@notice A minimal contract wallet: its owner sends it calldata and it calls
        the target with it. Tests use it to post batches through a contract
        instead of a direct call (issue 14, point 6: data availability must not
        depend on how the post_batch transaction was sent). Never deployed by
        scripts/deploy.py or opinfer.chain.deploy.
"""

# post_batch calldata: 128 leaves, 32 runs and 16 KiB of inputs fit well within this.
MAX_DATA: constant(uint256) = 65536

# @dev The only account that may make this contract call anything.
owner: public(address)


@deploy
def __init__():
    self.owner = msg.sender


@external
@payable
def forward(_target: address, _data: Bytes[MAX_DATA]):
    """
    @notice Call `_target` with `_data` and the value sent (reverting when the call reverts).
    """
    assert msg.sender == self.owner, "Forwarder: not the owner"
    raw_call(_target, _data, value=msg.value)
