"""Forward mode: the handler (absolute-form requests and CONNECT), access rules, anonymity,
proxy authentication and the DNS resolver. Imports proxy/, upstream/, limits, addresses,
config.schema and the compiled parser; the cache step is handed to it, not imported.
"""
