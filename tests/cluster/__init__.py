"""The one-node cluster tier: the project's image on a real Kubernetes node (see README.md)."""
