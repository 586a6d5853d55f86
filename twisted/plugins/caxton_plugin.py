"""
twistd plugin for Caxton: C{twistd -n caxton} runs a node.
"""

from twisted.application.service import ServiceMaker

caxton = ServiceMaker(
    "Caxton", "caxton.tap", "A server for WebAssembly agents talking FIPA-ACL.", "caxton"
)
