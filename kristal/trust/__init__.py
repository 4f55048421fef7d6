"""Trust: the local trust file (roots), Ed25519 signatures over content IDs, key files."""
