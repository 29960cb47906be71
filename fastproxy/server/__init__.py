"""The running program: `process` (master, workers, signals, respawn), `worker` (one worker's
event loop and its configuration generations), `listeners` (sockets), `timers` (deadlines).
Imports the handlers (proxy/, forward/, tcp), upstream/, cache/ and admin/; nothing imports it
but cli.
"""
