"""
tester (test-only): a Python component agent that does what a message's
content asks, to exercise the host interface and the sandbox.

content {"do": ...}:
    "spin"    loop forever (stopped by fuel or the wall-clock limit)
    "sleep"   time.sleep(content["s"]): the node refuses to let it wait
    "fail"    return err("not today"): fails just this message
    "crash"   raise an exception: componentize-py traps, with the traceback
              on stderr
    "print"   print a line to stdout and one to stderr, then reply inform
    "send"    host.send a valid message to content["to"] and an invalid one,
              reply inform {"codes": [...]} with both return codes
    "log"     host.log at levels 0-3
    "clock"   reply inform {"now_ms": host.now_ms()}
    "sandbox" reply inform with what the process can see: the file system,
              the environment, argv and whether a socket module exists
    anything else: reply inform {"ok": true}
"""

import json
import os
import sys
import time

import wit_world
from componentize_py_types import Err
from wit_world.imports import host


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        settings = json.loads(config) if config else {}
        if isinstance(settings, dict) and settings.get("refuse"):
            raise Err("refused to start")

    def handle(self, message: str) -> None:
        msg = json.loads(message)
        content = msg.get("content")
        what = content.get("do") if isinstance(content, dict) else None
        if what == "spin":
            while True:
                pass
        if what == "sleep":
            time.sleep(content.get("s", 60))
        if what == "fail":
            raise Err("not today")
        if what == "crash":
            raise ValueError("boom")
        if what == "print":
            print("hello from stdout")
            print("hello from stderr", file=sys.stderr)
        if what == "send":
            good = json.dumps({"performative": "inform", "receiver": content["to"], "content": {"hi": 1}})
            codes = [host.send(good), host.send("{not json"), host.send(json.dumps({"performative": "inform"}))]
            host.reply("inform", json.dumps({"codes": codes}))
            return
        if what == "log":
            for level in range(4):
                host.log(level, "level %d" % level)
        if what == "clock":
            host.reply("inform", json.dumps({"now_ms": host.now_ms()}))
            return
        if what == "sandbox":
            seen = {}
            for path in ("/", "."):
                try:
                    seen[path] = os.listdir(path)
                except OSError as e:
                    seen[path] = "%s: %s" % (type(e).__name__, e)
            try:
                import socket  # noqa: F401
                seen["socket"] = "importable"
            except ImportError as e:
                seen["socket"] = "ImportError: %s" % e
            seen["env"] = dict(os.environ)
            seen["argv"] = list(sys.argv)
            host.reply("inform", json.dumps(seen))
            return
        host.reply("inform", json.dumps({"ok": True}))
