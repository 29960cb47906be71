"""Benchmarks: load tests against nginx/HAProxy/Varnish/Squid and micro-benchmarks of ext/."""
