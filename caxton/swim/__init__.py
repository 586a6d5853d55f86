"""
Cluster membership: SWIM with Lifeguard, as a sans-I/O core with thin
Twisted adapters.
"""
