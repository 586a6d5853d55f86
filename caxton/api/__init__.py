"""
The REST management API (Klein).
"""
