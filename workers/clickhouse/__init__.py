"""The ClickHouse side: table schemas and JSON mapping, the insert, native column writers, insert faults.

Imports the leaf modules and ``observability`` only; never ``workers.nats``.
"""
