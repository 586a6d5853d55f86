"""
Density: how many core-module agents one node holds, and what each costs.

Deploys N agents (default 10,000) of tests/agents/ping.wat through
AgentManager.deploy on the real reactor, each with its own Store and
instance (agents start eagerly), then sends one request to every agent and
waits for every reply, so each instance has really run.  Reports resident
memory (RSS) and address space (VSZ) per agent, deploy time p50/p99 as the
node grows, and the time to reach all agents once.

    python bench/density.py [--agents 10000]
"""

from __future__ import annotations

import argparse
import time
from typing import Any, List

from twisted.internet.defer import Deferred

import _common
from _node import BenchNode, run

from caxton.acl.message import ACLMessage
from tests.wasmbuild import testing_agent, wat_module


def _status() -> dict:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmSize"):
                fields[key] = int(value.split()[0])  # kB
    return fields


async def main(reactor: Any, count: int) -> None:
    node = BenchNode(reactor)
    await node.start()
    try:
        wasm = wat_module(testing_agent("ping.wat"))
        await node.agents.deploy("warm", wasm, {})
        before = _status()
        deploy_us: List[float] = []
        started = time.perf_counter()
        for i in range(count):
            t = time.perf_counter()
            await node.agents.deploy(f"agent-{i}", wasm, {})
            deploy_us.append((time.perf_counter() - t) * 1e6)
        deployed_s = time.perf_counter() - started
        after_deploy = _status()

        replies = {"n": 0}
        done: Deferred = Deferred()
        record = node.store.record_mailbox

        def counting(client: str, message: Any) -> None:
            record(client, message)
            replies["n"] += 1
            if replies["n"] == count and not done.called:
                done.callback(None)

        node.store.record_mailbox = counting
        t = time.perf_counter()
        for i in range(count):
            node.router.send(ACLMessage("request", sender="client:bench", receiver=(f"agent-{i}",)))
        await done
        reach_s = time.perf_counter() - t
        after_run = _status()

        rss_kib = (after_run["VmRSS"] - before["VmRSS"]) / count
        vsz_mib = (after_run["VmSize"] - before["VmSize"]) / 1024 / count
        stats = _common.summarize(deploy_us)
        print(f"density: {count} ping agents deployed in {deployed_s:.1f} s, each run once in {reach_s:.2f} s")
        print(f"  deploy (AgentManager.deploy, growing node)  p50 {stats['p50_us']:.0f} us  p99 {stats['p99_us']:.0f} us")
        print(f"  RSS  +{(after_run['VmRSS'] - before['VmRSS']) / 1024:.1f} MiB = {rss_kib:.1f} KiB per agent "
              f"(after deploy only: {(after_deploy['VmRSS'] - before['VmRSS']) / count:.1f} KiB)")
        print(f"  VSZ  +{(after_run['VmSize'] - before['VmSize']) / 1024 / 1024:.1f} GiB = {vsz_mib:.1f} MiB address space per agent")
        _common.emit(
            "density",
            {"agents": count, "module": "tests/agents/ping.wat", "memory_reservation_mib": 64},
            {
                "deploy_us": stats,
                "deploy_all_s": round(deployed_s, 2),
                "run_each_once_s": round(reach_s, 3),
                "rss_kib_per_agent": round(rss_kib, 1),
                "rss_kib_per_agent_after_deploy": round((after_deploy["VmRSS"] - before["VmRSS"]) / count, 1),
                "vsz_mib_per_agent": round(vsz_mib, 1),
                "rss_total_mib": round(after_run["VmRSS"] / 1024, 1),
            },
        )
    finally:
        await node.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--agents", type=int, default=10_000)
    options = parser.parse_args()
    run(lambda reactor: main(reactor, options.agents))
