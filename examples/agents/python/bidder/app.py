"""
bidder: a FIPA contract-net participant with a fixed price, in Python (a
WebAssembly component); the same behaviour as ../../wat/cnp_bidder.wat.

    init             config {"price": N} (100 when absent or not a number)
    cfp              -> reply propose {"price": N}
    accept-proposal  -> reply inform {"done": true, "price": N}
    reject-proposal  -> nothing
    anything else    -> reply not-understood {"reason": "unexpected"},
                        except notices from the node itself (sender
                        "caxton") and not-understood messages, which are
                        ignored so two agents never bounce them forever.

Build (from this directory, see ../README.md):

    componentize-py -d ../../../../wit -w agent componentize app -o bidder.wasm
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host

INFO = 1


class WitWorld(wit_world.WitWorld):
    price = 100

    def init(self, config: str) -> None:
        try:
            settings = json.loads(config) if config else {}
        except ValueError as e:
            raise Err(f"config is not JSON: {e}")
        price = settings.get("price") if isinstance(settings, dict) else None
        if isinstance(price, (int, float)) and not isinstance(price, bool):
            WitWorld.price = price

    def handle(self, message: str) -> None:
        msg = json.loads(message)
        performative = msg.get("performative")
        if performative == "cfp":
            host.log(INFO, f"bidding {self.price} for {msg.get('sender')}")
            host.reply("propose", json.dumps({"price": self.price}))
        elif performative == "accept-proposal":
            host.reply("inform", json.dumps({"done": True, "price": self.price}))
        elif performative == "reject-proposal":
            pass
        elif performative == "not-understood" or msg.get("sender") == "caxton":
            pass
        else:
            host.reply("not-understood", json.dumps({"reason": "unexpected"}))
