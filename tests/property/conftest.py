"""Fixtures of the property tests: the shipped policies compiled against the v2 contract."""

from __future__ import annotations

import pytest

from streams.assembly import PolicySet
from streams.contracts.schemas import input_schema
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.policy.engine import Minimiser
from streams.policy.pseudonyms import StaticKeyRing


@pytest.fixture(scope="session")
def v2_minimiser(policy_set: PolicySet, keys: StaticKeyRing) -> Minimiser:
    """The shipped (v1-validated) policies applied to v2 events, as the worker does."""
    return Minimiser(policy_set.policies, input_schema(2), keys, DEFAULT_GEOGRAPHY)
