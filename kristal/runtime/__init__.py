"""What runs a release on this machine: staging, the query index, the pinned reader, the
post-activation checks."""
