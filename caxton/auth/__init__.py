"""
Who may use the management API, how often, and what they did (SPEC 6).

  - L{caxton.auth.keys}: API keys in the data directory, stored hashed;
  - L{caxton.auth.ratelimit}: token buckets per key;
  - L{caxton.auth.audit}: the audit log, JSON lines in the data directory;
  - L{caxton.auth.resource}: the resource in front of the API that decides
    each request, and the node's wiring of all of them (L{Guard}).
"""

__all__ = ["audit", "keys", "ratelimit", "resource", "threads"]
