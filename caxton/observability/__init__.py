"""
Observability (SPEC 10): Prometheus metrics (L{caxton.observability.metrics}),
the event stream (L{caxton.observability.events}), JSON log lines
(L{caxton.observability.logs}) and their HTTP side
(L{caxton.observability.web}).
"""

__all__ = ["events", "interfaces", "logs", "metrics", "web"]
