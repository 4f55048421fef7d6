"""The object store: the S3 adapter with conditional writes, streaming verified downloads,
the content-addressed local cache."""
