"""Policies: load, validate, apply; pseudonyms, contracts, explain, lock. Imports: crypto, contracts, domain, errors."""
