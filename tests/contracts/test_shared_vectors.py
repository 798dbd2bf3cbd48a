"""Python engine and Vyper StepVerifier agree bit for bit on shared vectors:
200 instances per element rule (random plus edge cases: saturation, negative
ties, the longest rows the models read)."""

import pytest
from brownie import StepVerifier, accounts

from opinfer.engine.vectors import CASES, cases


@pytest.fixture(scope="module")
def verifier():
    return StepVerifier.deploy({"from": accounts[0]})


@pytest.mark.parametrize("name", sorted(CASES))
def test_vectors_agree(verifier, name):
    fn = getattr(verifier, name)
    instances = cases(name, 200)
    assert len(instances) >= 200
    mismatches = [(args, expected, got) for args, expected in instances
                  if (got := fn(*args)) != expected]
    assert not mismatches, mismatches[:3]
