"""The admin listener: /status, /metrics and cache purges. It reaches the running worker
through the object it is given (never by importing server/).
"""
