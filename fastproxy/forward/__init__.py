"""Forward mode: the handler (absolute-form requests and CONNECT), access rules, anonymity,
proxy authentication and the DNS resolver. Imports proxy/, upstream/, cache/, limits,
addresses and config.schema.
"""
