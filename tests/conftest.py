"""Shared fixtures: the real contracts and policies, deterministic keys, an injected clock."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from streams.assembly import PolicySet, agency_names, key_holders, load_policy_set
from streams.crypto.keys import AgencyPrivateKey, generate_key_pair, parse_instant
from streams.crypto.letters import OPERATORS, LetterOpener, RawLetter
from streams.crypto.ring import PrivateKeyRing, PublicKeyRing
from streams.domain.geography import DEFAULT_GEOGRAPHY
from streams.policy.engine import Minimiser
from streams.policy.pseudonyms import StaticKeyRing
from streams.settings import Settings

#: 2026-01-01T00:00Z: "now" for every unit test (synthetic events are from 2020).
FIXED_NOW_MS = 1_767_225_600_000


def bench_module(name: str) -> ModuleType:
    """``bench/<name>.py`` loaded once (bench/ is no package): e.g. the independent small-cell check."""
    return module_from_file(Path(__file__).resolve().parents[1] / "bench" / f"{name}.py", f"bench_{name.lstrip('_')}")


def module_from_file(path: Path, name: str) -> ModuleType:
    """The script at ``path`` loaded once as module ``name`` (for scripts outside any package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    if spec.name not in sys.modules:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules[spec.name]


def all_agencies() -> list[str]:
    """Every agency that holds a key: national recipients and one regional agency per region."""
    return agency_names(load_policy_set(Settings()))


def deterministic_keys() -> StaticKeyRing:
    """Distinct, reproducible per-agency keys (tests only; real keys come from a key file)."""
    return StaticKeyRing(
        {a: hashlib.sha256(f"test-key:{a}".encode()).digest() for a in all_agencies()}, source="test keys"
    )


@functools.cache
def agency_key_pairs() -> dict[str, AgencyPrivateKey]:
    """One X25519 key pair per agency whose policy encrypts, and the operators', valid 2000-2100 (tests only)."""
    valid = parse_instant("2000-01-01"), parse_instant("2100-01-01")
    return {a: generate_key_pair(a, *valid) for a in key_holders(load_policy_set(Settings()))}


def public_key_ring() -> PublicKeyRing:
    """The processor's side of :func:`agency_key_pairs`: public keys only."""
    return PublicKeyRing([pair.public for pair in agency_key_pairs().values()], source="test public keys")


def private_key_ring(agency: str) -> PrivateKeyRing:
    """One agency's side of :func:`agency_key_pairs`: its private key."""
    return PrivateKeyRing([agency_key_pairs()[agency]], agency)


def open_letter(pipeline: Any, out: Any) -> RawLetter:
    """The raw record sealed in dead letter ``out`` of ``pipeline``, opened with the operators' test key
    (the key record is the pipeline's current operators' data key: ``process`` returns no key records)."""
    opener = LetterOpener(private_key_ring(OPERATORS))
    key = pipeline.letters.encryptor.current_key(OPERATORS)
    if key is not None:
        opener.add_key_record(key.record.value())
    return opener.open(out.topic, 0, 0, out.value, out.headers)


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
