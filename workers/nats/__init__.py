"""The NATS side: the bulk protocol reader, the JetStream pull protocol, connections, dead letters.

Imports the leaf modules and ``observability`` only; never ``workers.clickhouse``.
"""
