"""PostgreSQL wire protocol v3, sans-IO: bytes in, typed messages out, no sockets.

Nothing in this package imports anything else from `gateway`.
"""
