"""HTTP proxying shared by both modes: the reverse handler, the router (host/path routes,
canary splits), intermediary rules (Via, X-Forwarded-*, Max-Forwards, Upgrade) and the
answers the proxy writes itself, response filters (`compress`, `filters`) and traffic
shadowing. Imports upstream/, limits, cache.peers (the fleet's hop field) and the compiled
modules; the cache step is handed to the reverse handler by the worker, not imported.
"""
