"""The admin listener: the status page (`page`), /status, /metrics, POST /reload and cache
purges (`server`). It reaches the running worker only through the `view.WorkerView` interface
it is given (implemented by server/adminview.py), never by importing server/.
"""
