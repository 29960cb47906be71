"""The running program: `process` (master, workers, signals, respawn), `worker` (one worker's
event loop and its configuration generations), `listeners` (sockets), `timers` (deadlines).
Imports config.load, the handlers (proxy/, forward/, tcp), upstream/, cache/, admin/,
accesslog and errorlog; nothing imports it but cli (and admin, for `listeners`).
"""
