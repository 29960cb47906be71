"""The upstream side: groups of servers (`group`), their settings, balancing (`balance/`),
health checks, outlier ejection, the circuit breaker and retries (`breaker`), TLS to
servers (`tls`) and HTTP/2 to h2c servers (`h2`). Imports the compiled modules,
config.schema and errorlog only.
"""
