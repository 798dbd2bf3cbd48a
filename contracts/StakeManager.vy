# pragma version 0.4.3
"""
@title StakeManager
@notice Holds the ETH stakes of inference nodes and the bonds of challengers.
        A node's stake stays slashable until it has waited out an unbonding
        delay that is longer than the challenge window plus the longest
        possible dispute game, and it cannot withdraw while a dispute
        against it is open (it can always start unbonding: otherwise
        re-posted leaves and a griefer's challenges could keep it from ever
        leaving). Only the dispute game can lock bonds, slash stakes or award
        bonds. Payouts are pull payments (`claim`), so a reverting receiver
        can never block a game from resolving.
        A slash takes the node's whole stake at once; the challenger's share
        waits in `reward_escrow` until the dispute game names the challenger
        who proved the fraud first (`release_reward`), so a cheater cannot
        win its own reward back by losing a self-challenge before an honest
        game ends.
@dev    Invariant: self.balance == sum(stake) + sum(unbonding) + sum(bond)
        + sum(locked_bond) + sum(claimable) + sum(reward_escrow). Tests check
        it after every sequence of operations.
"""

# ---------------------------------------------------------------- events

event Staked:
    node: indexed(address)
    amount: uint256
    total: uint256

event UnbondRequested:
    node: indexed(address)
    amount: uint256
    unlock_at: uint256

event StakeWithdrawn:
    node: indexed(address)
    amount: uint256

event BondDeposited:
    challenger: indexed(address)
    amount: uint256

event BondWithdrawn:
    challenger: indexed(address)
    amount: uint256

event DisputeOpened:
    node: indexed(address)
    challenger: indexed(address)
    bond: uint256

event BondReleased:
    challenger: indexed(address)
    node: indexed(address)
    bond: uint256

event BondAwarded:
    challenger: indexed(address)
    node: indexed(address)
    bond: uint256

event Slashed:
    node: indexed(address)
    challenger: indexed(address)
    amount: uint256
    reward: uint256
    to_treasury: uint256

event RewardReleased:
    node: indexed(address)
    challenger: indexed(address)
    reward: uint256

event Claimed:
    account: indexed(address)
    amount: uint256

event DisputeGameSet:
    game: address

# ---------------------------------------------------------------- constants

BPS: constant(uint256) = 10_000

# ---------------------------------------------------------------- storage

# @dev Deployer; may set the dispute game once.
owner: public(address)
# @dev The only contract allowed to lock bonds, slash and award (set once).
dispute_game: public(address)
# @dev Receives the part of a slashed stake that does not go to the challenger.
treasury: public(address)
# @dev Smallest active stake that lets a node serve results.
min_stake: public(uint256)
# @dev Seconds between an unbond request and the earliest withdrawal.
unbonding_delay: public(uint256)
# @dev Share of a slashed stake paid to the winning challenger, in basis points.
challenger_reward_bps: public(uint256)
# @dev Active (slashable, serving) stake per node.
stake: public(HashMap[address, uint256])
# @dev Stake on its way out: still slashable until withdrawn.
unbonding: public(HashMap[address, uint256])
# @dev Earliest time the unbonding amount can be withdrawn.
unlock_at: public(HashMap[address, uint256])
# @dev Number of games open against each node; blocks withdrawal (not unbonding).
open_disputes: public(HashMap[address, uint256])
# @dev Free challenger bond, withdrawable at any time.
bond: public(HashMap[address, uint256])
# @dev Challenger bond locked in open games.
locked_bond: public(HashMap[address, uint256])
# @dev Pull payments: rewards, awarded bonds and the treasury's share.
claimable: public(HashMap[address, uint256])
# @dev Challenger shares of a node's slashed stake, held until the dispute
#      game names the winner (the earliest-opened game that proved fraud).
reward_escrow: public(HashMap[address, uint256])


@deploy
def __init__(_min_stake: uint256, _unbonding_delay: uint256, _challenger_reward_bps: uint256, _treasury: address):
    assert _min_stake > 0, "StakeManager: min stake is zero"
    assert _challenger_reward_bps <= BPS, "StakeManager: reward above 100%"
    assert _treasury != empty(address), "StakeManager: treasury is zero"
    self.owner = msg.sender
    self.min_stake = _min_stake
    self.unbonding_delay = _unbonding_delay
    self.challenger_reward_bps = _challenger_reward_bps
    self.treasury = _treasury


# ---------------------------------------------------------------- external: admin

@external
def set_dispute_game(_game: address):
    """
    @notice Wire the dispute game; callable once, by the owner.
    """
    assert msg.sender == self.owner, "StakeManager: caller is not the owner"
    assert self.dispute_game == empty(address), "StakeManager: dispute game already set"
    assert _game != empty(address), "StakeManager: game is zero"
    self.dispute_game = _game
    log DisputeGameSet(game=_game)


# ---------------------------------------------------------------- external: nodes

@external
@payable
@nonreentrant
def stake_eth():
    """
    @notice Add msg.value to the caller's active stake.
    """
    assert msg.value > 0, "StakeManager: zero stake"
    total: uint256 = self.stake[msg.sender] + msg.value
    assert total >= self.min_stake, "StakeManager: below minimum stake"
    self.stake[msg.sender] = total
    log Staked(node=msg.sender, amount=msg.value, total=total)


@external
def request_unbond(_amount: uint256):
    """
    @notice Move `_amount` of active stake to unbonding. It stays slashable and
            can be withdrawn after `unbonding_delay` (the timer restarts for the
            whole unbonding amount).
    @dev Allowed while disputes are open (re-posted leaves and a griefer's
         challenges could otherwise keep a node from ever leaving); withdrawal
         still waits for every open game. Leaves of a node that is no longer
         active are posted only while their challenge window closes before
         `unlock_at` (ResultRollup._check_postable), so every game against it
         opens before the unlock and the wait ends within one game length.
    """
    assert _amount > 0, "StakeManager: zero amount"
    current: uint256 = self.stake[msg.sender]
    assert _amount <= current, "StakeManager: amount above stake"
    remaining: uint256 = current - _amount
    assert remaining == 0 or remaining >= self.min_stake, "StakeManager: remainder below minimum"
    self.stake[msg.sender] = remaining
    self.unbonding[msg.sender] += _amount
    unlock: uint256 = block.timestamp + self.unbonding_delay
    self.unlock_at[msg.sender] = unlock
    log UnbondRequested(node=msg.sender, amount=_amount, unlock_at=unlock)


@external
@nonreentrant
def withdraw_stake():
    """
    @notice Withdraw the whole unbonding amount once its delay has passed.
    """
    amount: uint256 = self.unbonding[msg.sender]
    assert amount > 0, "StakeManager: nothing unbonding"
    assert block.timestamp >= self.unlock_at[msg.sender], "StakeManager: still unbonding"
    assert self.open_disputes[msg.sender] == 0, "StakeManager: dispute open"
    self.unbonding[msg.sender] = 0
    log StakeWithdrawn(node=msg.sender, amount=amount)
    raw_call(msg.sender, b"", value=amount)


# ---------------------------------------------------------------- external: challengers

@external
@payable
@nonreentrant
def deposit_bond():
    """
    @notice Add msg.value to the caller's free challenger bond.
    """
    assert msg.value > 0, "StakeManager: zero bond"
    self.bond[msg.sender] += msg.value
    log BondDeposited(challenger=msg.sender, amount=msg.value)


@external
@nonreentrant
def withdraw_bond(_amount: uint256):
    """
    @notice Withdraw free (not locked) challenger bond.
    """
    assert _amount > 0, "StakeManager: zero amount"
    assert _amount <= self.bond[msg.sender], "StakeManager: amount above free bond"
    self.bond[msg.sender] -= _amount
    log BondWithdrawn(challenger=msg.sender, amount=_amount)
    raw_call(msg.sender, b"", value=_amount)


@external
@nonreentrant
def claim():
    """
    @notice Pay out everything owed to the caller (rewards, awarded bonds).
    """
    amount: uint256 = self.claimable[msg.sender]
    assert amount > 0, "StakeManager: nothing to claim"
    self.claimable[msg.sender] = 0
    log Claimed(account=msg.sender, amount=amount)
    raw_call(msg.sender, b"", value=amount)


# ---------------------------------------------------------------- external: dispute game only

@external
@nonreentrant
def open_dispute(_node: address, _challenger: address, _bond: uint256):
    """
    @notice Lock `_bond` of the challenger's free bond and the node's stake.
    """
    self._only_game()
    # No stake check: a node already slashed to zero must still be provable
    # wrong on its other leaves, so those results become invalid too.
    assert self.bond[_challenger] >= _bond, "StakeManager: insufficient free bond"
    self.bond[_challenger] -= _bond
    self.locked_bond[_challenger] += _bond
    self.open_disputes[_node] += 1
    log DisputeOpened(node=_node, challenger=_challenger, bond=_bond)


@external
@nonreentrant
def award_bond(_node: address, _challenger: address, _bond: uint256):
    """
    @notice The node won: the challenger's locked bond becomes claimable by the node.
    """
    self._only_game()
    self._close(_node, _challenger, _bond)
    self.claimable[_node] += _bond
    log BondAwarded(challenger=_challenger, node=_node, bond=_bond)


@external
@nonreentrant
def release_bond(_node: address, _challenger: address, _bond: uint256):
    """
    @notice The game ended without a loser (the leaf was already proven
            invalid elsewhere): the bond returns to the challenger's free bond.
    """
    self._only_game()
    self._close(_node, _challenger, _bond)
    self.bond[_challenger] += _bond
    log BondReleased(challenger=_challenger, node=_node, bond=_bond)


@external
@nonreentrant
def slash(_node: address, _challenger: address, _bond: uint256) -> uint256:
    """
    @notice The node lost: its whole stake (active and unbonding) is slashed,
            the challenger's share goes to the node's reward escrow (the
            game releases it with `release_reward`), the rest to the
            treasury, and the challenger's bond is freed.
    @return The amount slashed.
    """
    self._only_game()
    self._close(_node, _challenger, _bond)
    self.bond[_challenger] += _bond
    amount: uint256 = self.stake[_node] + self.unbonding[_node]
    self.stake[_node] = 0
    self.unbonding[_node] = 0
    reward: uint256 = amount * self.challenger_reward_bps // BPS
    self.reward_escrow[_node] += reward
    self.claimable[self.treasury] += amount - reward
    log Slashed(node=_node, challenger=_challenger, amount=amount, reward=reward, to_treasury=amount - reward)
    return amount


@external
@nonreentrant
def release_reward(_node: address, _challenger: address) -> uint256:
    """
    @notice Pay the node's escrowed challenger share to `_challenger` (the
            game decides who proved the fraud first).
    @return The amount released.
    """
    self._only_game()
    reward: uint256 = self.reward_escrow[_node]
    if reward > 0:
        self.reward_escrow[_node] = 0
        self.claimable[_challenger] += reward
        log RewardReleased(node=_node, challenger=_challenger, reward=reward)
    return reward


# ---------------------------------------------------------------- views

@external
@view
def is_active(_node: address) -> bool:
    """
    @notice True when the node's active stake meets the minimum.
    """
    return self.stake[_node] >= self.min_stake


@external
@view
def slashable(_node: address) -> uint256:
    """
    @notice Everything a lost game would take from the node.
    """
    return self.stake[_node] + self.unbonding[_node]


# ---------------------------------------------------------------- internal

@internal
@view
def _only_game():
    assert msg.sender == self.dispute_game, "StakeManager: caller is not the dispute game"


@internal
def _close(_node: address, _challenger: address, _bond: uint256):
    assert self.open_disputes[_node] > 0, "StakeManager: no open dispute"
    assert self.locked_bond[_challenger] >= _bond, "StakeManager: bond not locked"
    self.open_disputes[_node] -= 1
    self.locked_bond[_challenger] -= _bond
