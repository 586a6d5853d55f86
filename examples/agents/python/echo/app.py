"""
echo: the smallest useful Caxton agent, in Python (a WebAssembly component).

Every message it receives is answered with an ``inform`` whose content is the
whole incoming message (a JSON object, so valid JSON content as it stands).
The node turns the reply into a full ACL message: receiver (reply_to or
sender), conversation_id, in_reply_to (from reply_with) and protocol.

Build (from this directory, see ../README.md):

    componentize-py -d ../../../../wit -w agent componentize app -o echo.wasm
"""

import wit_world
from wit_world.imports import host


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        pass

    def handle(self, message: str) -> None:
        # The reply's return code (0 or a negative error) is not our failure:
        # the node records the outcome of the reply itself.
        host.reply("inform", message)
