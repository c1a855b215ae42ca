"""Audit trail: decision records under an audit-only secret, chained, indexed. Imports: policy, contracts, domain."""
