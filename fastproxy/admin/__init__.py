"""The admin listener: /status, /metrics and cache purges. It reaches the running worker
through the object it is given; of server/ it imports only `listeners`, to bind its socket as
every listener is bound.
"""
