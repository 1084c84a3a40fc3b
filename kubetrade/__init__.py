"""kubetrade: Kubernetes-native machine-learning crypto trading bots."""

__version__ = "0.1.0"
