"""Policy engine: load, validate, apply; pseudonyms, contracts, explain, lock. Imports: contracts, domain, errors."""
