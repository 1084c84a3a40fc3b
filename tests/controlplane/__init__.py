"""Kubernetes control plane for the tests: Go wrapper module, builder, pytest plugin."""
