"""Encryption for recipients: agency key rings, HPKE-sealed data keys, AES-GCM fields. Imports: contracts, errors."""
