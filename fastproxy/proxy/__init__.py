"""HTTP proxying shared by both modes: the reverse handler, the router (host/path routes,
canary splits), intermediary rules (Via, X-Forwarded-*, Max-Forwards, Upgrade) and the
answers the proxy writes itself. Imports upstream/, cache/, limits and config.schema.
"""
