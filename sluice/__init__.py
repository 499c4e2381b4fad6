"""sluice: a telemetry data lake that can be replayed."""

__version__ = "0.1.0"
