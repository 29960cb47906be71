"""The upstream side: groups of servers (`group`), their settings, balancing (`balance/`),
health checks, outlier ejection, the circuit breaker and retries (`breaker`). Imports the
compiled relay/hashing modules and config.schema only.
"""
