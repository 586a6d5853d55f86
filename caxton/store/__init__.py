"""
The node's local state in embedded SQLite.
"""
