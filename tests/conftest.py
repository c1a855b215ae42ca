"""Shared fixtures: the real contracts and policies, deterministic keys, an injected clock."""

from __future__ import annotations

import hashlib

import pytest

from streams.assembly import PolicySet, agency_names, load_policy_set
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.policy.engine import Minimiser
from streams.policy.pseudonyms import StaticKeyRing
from streams.settings import Settings

#: 2026-01-01T00:00Z: "now" for every unit test (synthetic events are from 2020).
FIXED_NOW_MS = 1_767_225_600_000


def all_agencies() -> list[str]:
    """Every agency that holds a key: national recipients and one regional agency per region."""
    return agency_names(load_policy_set(Settings()))


def deterministic_keys() -> StaticKeyRing:
    """Distinct, reproducible per-agency keys (tests only; real keys come from a key file)."""
    return StaticKeyRing(
        {a: hashlib.sha256(f"test-key:{a}".encode()).digest() for a in all_agencies()}, source="test keys"
    )


@pytest.fixture(scope="session")
def keys() -> StaticKeyRing:
    """Deterministic per-agency keys."""
    return deterministic_keys()


@pytest.fixture(scope="session")
def policy_set() -> PolicySet:
    """The shipped policies, validated against the v1 input contract."""
    return load_policy_set(Settings())


@pytest.fixture(scope="session")
def minimiser(policy_set: PolicySet) -> Minimiser:
    """The shipped policies compiled with deterministic keys."""
    return Minimiser(policy_set.policies, policy_set.input_schema, deterministic_keys(), DEFAULT_GEOGRAPHY)
