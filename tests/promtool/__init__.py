"""promtool, built from the Prometheus Go module, for unit tests of the alerting rules."""
