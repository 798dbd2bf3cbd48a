"""HeadTracker (opinfer.chain.reorg): finding where a chain forked from the
blocks a service derived state from, at every depth up to the bound and
beyond it, and the documented confirmations per chain kind."""

import pytest

from opinfer.chain.reorg import (DEFAULT_MAX_DEPTH, SAFE_CONFIRMATIONS, HeadTracker, default_confirmations,
                                 resolve_confirmations)


def chain(height: int, fork_at: int | None = None, salt: str = "b"):
    """canonical(n) of a chain `height` long whose blocks above `fork_at` were replaced."""
    def canonical(n):
        if n < 0 or n > height:
            return None
        branch = salt if fork_at is not None and n > fork_at else "a"
        return f"{branch}{n}".encode().ljust(32, b"\0")
    return canonical


def tracked(numbers, canonical, depth=DEFAULT_MAX_DEPTH) -> HeadTracker:
    t = HeadTracker(depth)
    for n in numbers:
        t.remember(n, canonical(n))
    return t


def test_no_reorganisation_is_one_lookup_per_block_remembered_since_the_last_check():
    calls = []
    canonical = chain(100)
    t = tracked(range(90, 101), canonical)

    def counted(n):
        calls.append(n)
        return canonical(n)
    assert t.check(counted) is None and calls == list(range(90, 101))   # all new since no check
    calls.clear()
    assert t.check(counted) is None and calls == [100]                  # then the newest alone
    calls.clear()
    canonical = chain(101)
    t.remember(101, canonical(101))
    assert t.check(counted) is None and sorted(calls) == [100, 101]     # the new one and the anchor


def test_a_block_remembered_on_top_of_a_replaced_history_does_not_hide_the_fork():
    """The fault suite's lost finalize: blocks 90-100 checked; a reorganisation replaces 98-100;
    then block 101 of the new branch is remembered (a receipt read after it) before the next
    check. The newest block is canonical, the ones under it are not: the fork is still 97."""
    before = chain(100)
    t = tracked(range(90, 101), before)
    assert t.check(before) is None
    after = chain(101, fork_at=97)
    t.remember(101, after(101))
    assert t.check(after) == 97
    assert max(t.blocks) == 97 and t.check(after) is None


def test_a_loaded_tracker_checks_every_block_once():
    before = chain(100)
    text = tracked(range(90, 101), before).dumps()
    after = chain(100, fork_at=95)
    t = HeadTracker.loads(text)
    t.blocks[100] = after(100)     # as if the newest had been re-read on the new branch
    assert t.check(after) == 95


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 17, 64])
def test_the_fork_point_of_a_reorganisation_up_to_the_bound(depth):
    before = chain(100)
    t = tracked(range(30, 101), before)
    after = chain(100, fork_at=100 - depth)            # the same height, the newest `depth` blocks replaced
    assert t.check(after) == 100 - depth
    assert max(t.blocks) == 100 - depth                # what lies above the fork is forgotten
    assert t.check(after) is None                      # and the rest is canonical


def test_sparse_blocks_give_the_newest_common_one_and_a_shorter_chain_is_a_reorganisation():
    before = chain(100)
    t = tracked([80, 90, 95, 100], before)
    assert t.check(chain(96, fork_at=92)) == 90        # evm_revert: shorter, then another branch
    assert t.check(chain(96)) is None


def test_deeper_than_the_bound_re_derives_from_the_oldest_block_remembered():
    before = chain(200)
    t = tracked(range(100, 201), before, depth=8)
    assert sorted(t.blocks) == list(range(192, 201))   # depth + 1 blocks kept
    assert t.check(chain(200, fork_at=150)) == 191 and t.deep == 1 and t.blocks == {}


def test_persisted_and_read_back():
    t = tracked([5, 6, 7], chain(7), depth=4)
    back = HeadTracker.loads(t.dumps(), depth=4)
    assert back.blocks == t.blocks and back.check(chain(7)) is None
    assert HeadTracker.loads(None).blocks == {}
    with pytest.raises(ValueError):
        HeadTracker(0)


def test_confirmations_default_per_chain_kind():
    assert default_confirmations(31337) == 0 and default_confirmations(1337) == 0     # anvil, hardhat
    assert default_confirmations(1) == SAFE_CONFIRMATIONS == default_confirmations(10)
    assert resolve_confirmations(-1, 1) == SAFE_CONFIRMATIONS and resolve_confirmations(None, 31337) == 0
    assert resolve_confirmations(3, 31337) == 3
