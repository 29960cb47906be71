"""The running program: `process` (master, workers, signals, respawn), `worker` (one worker's
event loop and its configuration generations), `listeners` (sockets), `timers` (deadlines).
Imports config.load, the handlers (proxy/, forward/, tcp), upstream/, cache/, admin/,
accesslog and errorlog; nothing imports it but cli. `adminview` implements the admin's
WorkerView; `h2` serves HTTP/2 clients (each stream through the relay); `tls` picks
certificates by SNI.
"""
