"""
The cluster above membership: node streams, PKI, the agent registry.
"""
