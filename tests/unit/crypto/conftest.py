"""Fixtures of the encryption tests: instants, generated agency key pairs, rings."""

from __future__ import annotations

import pytest

from streams.crypto.keys import AgencyPrivateKey, generate_key_pair, parse_instant
from streams.crypto.ring import PrivateKeyRing, PublicKeyRing

DAY_MS = 86_400_000
T0 = parse_instant("2026-01-01")  # the first day of the test keys
YEAR_END = parse_instant("2027-01-01")


@pytest.fixture(scope="module")
def cnam_pair() -> AgencyPrivateKey:
    """A CNAM key pair valid through 2026."""
    return generate_key_pair("cnam", T0, YEAR_END)


@pytest.fixture(scope="module")
def public_ring(cnam_pair: AgencyPrivateKey) -> PublicKeyRing:
    """The processor's ring holding CNAM's public key only."""
    return PublicKeyRing([cnam_pair.public])


@pytest.fixture(scope="module")
def private_ring(cnam_pair: AgencyPrivateKey) -> PrivateKeyRing:
    """CNAM's own private key ring."""
    return PrivateKeyRing([cnam_pair], "cnam")
