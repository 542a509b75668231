"""kms.client: a Python client for the kms HTTP API."""
