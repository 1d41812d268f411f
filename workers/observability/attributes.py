"""The attribute keys of jetsink's own, on spans, metric points and the process's resource.

OpenTelemetry asks custom keys to be namespaced; the standard ones (messaging.*, db.*,
error.type) are written where they are used.
"""

A_PIPELINE = "jetsink.pipeline"
A_PARTITION = "jetsink.partition"
A_SLOT = "jetsink.worker.slot"
A_ROLE = "jetsink.role"
