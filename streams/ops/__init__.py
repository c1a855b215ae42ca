"""Operations: Prometheus metrics counted at commit, liveness and readiness. Imports: pipeline."""
