"""HTTP proxying shared by both modes: the reverse handler, the router (host/path routes,
canary splits), intermediary rules (Via, X-Forwarded-*, Max-Forwards, Upgrade) and the
answers the proxy writes itself. Imports upstream/, limits and the compiled modules; the cache
step is handed to the reverse handler by the worker, not imported.
"""
