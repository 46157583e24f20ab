"""Operating the bridge: liveness, readiness and Prometheus metrics."""
