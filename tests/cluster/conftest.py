"""The one-node cluster fixtures for the tests in this folder (plugin: fixtures.py)."""

from tests.cluster.fixtures import (  # noqa: F401  (fixtures and hooks pytest picks up here)
    cluster,
    cluster_kubectl,
    cluster_namespace,
    pytest_configure,
    pytest_terminal_summary,
)
