"""
MCP tools for agents (SPEC 8): the client, the gateway the router calls.
"""
