"""
Caxton: a server for multi-agent systems.

Agents compiled to WebAssembly run sandboxed in wasmtime and talk to each
other in FIPA-ACL; a node is a Twisted service (C{twistd -n caxton}).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
