"""Envelope encryption of records (keyring) and homomorphic-encryption checks (he)."""
