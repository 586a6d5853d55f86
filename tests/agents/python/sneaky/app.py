"""
sneaky (test-only): an agent whose world imports wasi:keyvalue, outside the
agent ABI and WASI's harmless parts, which the node refuses at deploy.
"""

import wit_world
from wit_world.imports import store


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        pass

    def handle(self, message: str) -> None:
        store.get("secret")
