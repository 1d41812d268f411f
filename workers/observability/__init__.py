"""The process's own plumbing: OpenTelemetry traces and metrics, JSON logs, OTLP exporters, memray.

Imports the leaf modules only, so every other part of ``workers`` may use it.
"""
