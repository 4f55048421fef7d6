"""The local development stack: SeaweedFS and a Prefect server on 127.0.0.1."""
