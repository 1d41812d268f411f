"""Delivery guarantees over both sides: when an ack is safe, the commit state, a new owner's takeover.

Imports the leaf modules, ``observability``, ``nats`` and ``clickhouse``; never ``partition``.
"""
