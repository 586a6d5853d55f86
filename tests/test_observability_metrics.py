"""
Tests for L{caxton.observability.metrics}: the router's message observer
(with the real router on a L{LocalNode}), and the families read at scrape
time from the agent manager, a cluster and registered gauges, parsed back
with C{prometheus_client}'s own parser.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from caxton.acl.message import ACLMessage, CapabilityReceiver
from caxton.acl.protocols import ConversationTracker
from caxton.observability.interfaces import IMessageObserver, NullMessageObserver
from caxton.observability.metrics import LATENCY_BUCKETS, MAX_REASONS, MessageMetrics, NodeMetrics
from caxton.router.router import Router
from tests.localnode import LocalNodeTestCase
from tests.wasmbuild import example, wat_module


def samples(metrics: NodeMetrics) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    """
    Every sample of the exposition, by name and sorted labels.
    """
    body, content_type = metrics.exposition()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8", content_type
    text = body.decode("utf-8")
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(metrics: NodeMetrics, name: str, **labels: str) -> Optional[float]:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


@implementer(IMessageObserver)
class RecordingObserver:
    """
    An L{IMessageObserver} that remembers every call.
    """

    def __init__(self) -> None:
        self.calls: List[Tuple[str, str, Any]] = []

    def routed(self, where: str, latency: Optional[float]) -> None:
        self.calls.append(("routed", where, latency))

    def failed(self, reason: str) -> None:
        self.calls.append(("failed", reason, None))


class MessageMetricsTests(SynchronousTestCase):
    """
    Counts and latencies become Prometheus families.
    """

    def test_interface(self) -> None:
        """
        Both observers provide L{IMessageObserver}; a router without one
        uses the null observer.
        """
        verifyObject(IMessageObserver, MessageMetrics())
        verifyObject(IMessageObserver, NullMessageObserver())
        verifyObject(IMessageObserver, RecordingObserver())

    def test_counts(self) -> None:
        """
        Routed messages are counted by where they went (every C{where}
        exported, at zero too); failures by reason; latencies fall in the
        smallest bucket that holds them, cumulatively.
        """
        metrics = NodeMetrics("n1", "1.0", process=False)
        observer = metrics.messages
        observer.routed("local", 0.00003)
        observer.routed("local", 0.0003)
        observer.routed("client", 2.0)
        observer.routed("local", None)
        observer.routed("tool", None)
        observer.failed("QUEUE_FULL")
        observer.failed("QUEUE_FULL")
        observer.failed("TIMEOUT")
        self.assertEqual(value(metrics, "caxton_messages_routed_total", where="local"), 3)
        self.assertEqual(value(metrics, "caxton_messages_routed_total", where="client"), 1)
        self.assertEqual(value(metrics, "caxton_messages_routed_total", where="remote"), 0)
        self.assertEqual(value(metrics, "caxton_messages_failed_total", reason="QUEUE_FULL"), 2)
        self.assertEqual(value(metrics, "caxton_messages_failed_total", reason="TIMEOUT"), 1)
        self.assertEqual(value(metrics, "caxton_message_latency_seconds_count"), 3)
        self.assertAlmostEqual(value(metrics, "caxton_message_latency_seconds_sum"), 2.00033)
        self.assertEqual(value(metrics, "caxton_message_latency_seconds_bucket", le="5e-05"), 1)
        self.assertEqual(value(metrics, "caxton_message_latency_seconds_bucket", le="0.00025"), 1)
        self.assertEqual(value(metrics, "caxton_message_latency_seconds_bucket", le="0.0005"), 2)
        self.assertEqual(value(metrics, "caxton_message_latency_seconds_bucket", le="2.5"), 3)
        self.assertEqual(value(metrics, "caxton_message_latency_seconds_bucket", le="+Inf"), 3)
        self.assertEqual(len(LATENCY_BUCKETS), 16)

    def test_reasons_bounded(self) -> None:
        """
        Past L{MAX_REASONS} distinct reasons, new ones count as C{other}.
        """
        observer = MessageMetrics()
        for i in range(MAX_REASONS + 5):
            observer.failed(f"R{i}")
        observer.failed("R0")
        [_, failed, _] = list(observer.collect())
        counts = {s.labels["reason"]: s.value for s in failed.samples}
        self.assertEqual(len(counts), MAX_REASONS + 1)
        self.assertEqual((counts["other"], counts["R0"]), (5, 2))


def echo() -> bytes:
    return wat_module(example("wat", "echo.wat"))


class RouterObserverTests(LocalNodeTestCase):
    """
    The router tells its observer where each message went and each
    failure.
    """

    def setUp(self) -> None:
        super().setUp()
        self.observer = RecordingObserver()
        self.router = Router(
            self.node.clock, self.agents, self.node.store, ConversationTracker(), observer=self.observer
        )
        self.node.router = self.router

    def test_local_and_client(self) -> None:
        """
        A request to an agent is routed locally, its reply to the client's
        mailbox: both with the time from acceptance (zero on a clock that
        does not move).
        """
        self.deploy("echo", echo())
        self.send(performative="request", receiver=("echo",), content={"n": 1})
        self.assertEqual(self.observer.calls, [("routed", "local", 0.0), ("routed", "client", 0.0)])

    def test_failures(self) -> None:
        """
        A message to no agent fails with AGENT_NOT_FOUND (and the failure
        reaches the client); an unmet capability likewise.
        """
        self.send(performative="inform", receiver=("nobody",))
        self.assertEqual(self.observer.calls, [("failed", "AGENT_NOT_FOUND", None), ("routed", "client", 0.0)])
        del self.observer.calls[:]
        self.send(performative="cfp", receiver=CapabilityReceiver("translate"))
        self.assertEqual(self.observer.calls[0], ("failed", "AGENT_NOT_FOUND", None))

    def test_default(self) -> None:
        """
        Without an observer the router uses the null one.
        """
        router = Router(self.node.clock, self.agents, self.node.store)
        self.assertIsInstance(router._observer, NullMessageObserver)


class FakeCluster:
    """
    What the metrics read of a clustered node: its C{status()}.
    """

    def __init__(self) -> None:
        self.partition = "minority"

    def status(self) -> Dict[str, Any]:
        return {
            "partition": self.partition,
            "members": {"alive": 2, "suspect": 1, "dead": 2, "left": 0},
            "expected": 5,
            "local_health": 3,
            "counters": {
                "swim": {"probes": 40, "probe_failures": 4, "suspicions": 5, "refutations": 1,
                         "deaths": 2, "lag_events": 0, "malformed_dropped": 3,
                         "push_pulls": 7, "push_pull_failures": 2},
                "udp": {"packets_in": 100, "packets_out": 90, "bytes_in": 1000, "bytes_out": 900,
                        "drops_malformed": 1, "drops_unauthenticated": 6, "drops_replayed": 0,
                        "drops_too_large": 0},
            },
        }


class ScrapeTests(LocalNodeTestCase):
    """
    Agents, queues, the cluster and registered gauges are read at scrape
    time.
    """

    def setUp(self) -> None:
        super().setUp()
        self.metrics = NodeMetrics("test-node", "9.9", process=False)
        self.metrics.watch_agents(self.agents)

    def test_agents_and_queues(self) -> None:
        """
        Agents are counted by state; messages waiting in inboxes by sum and
        fullest inbox, with the node's limit.
        """
        self.deploy("echo", echo())
        self.deploy("one", echo())
        self.deploy("two", echo())
        self.settle(self.agents.stop("one"))
        self.settle(self.agents.stop("two"))
        for _ in range(3):
            self.router.send(self.message("one"))
        self.router.send(self.message("two"))
        self.assertEqual(value(self.metrics, "caxton_agents", state="running"), 1)
        self.assertEqual(value(self.metrics, "caxton_agents", state="stopped"), 2)
        self.assertEqual(value(self.metrics, "caxton_agents", state="failed"), 0)
        self.assertEqual(value(self.metrics, "caxton_queue_depth", queue="agent_inbox"), 4)
        self.assertEqual(value(self.metrics, "caxton_queue_depth_max", queue="agent_inbox"), 3)
        self.assertEqual(value(self.metrics, "caxton_queue_limit", queue="agent_inbox"), 10_000)
        self.settle(self.agents.start("one"))
        self.assertEqual(value(self.metrics, "caxton_queue_depth", queue="agent_inbox"), 1)
        self.assertEqual(value(self.metrics, "caxton_node_info", node="test-node", version="9.9"), 1)

    def settle(self, coroutine: Any) -> Any:
        d = Deferred.fromCoroutine(coroutine)
        self.node.pump()
        return self.successResultOf(d)

    def message(self, to: str) -> Any:
        return ACLMessage(performative="inform", sender="client:alice", receiver=(to,), content={})

    def test_cluster(self) -> None:
        """
        Members by state, the partition mode (1 for the current one), local
        health and the SWIM and UDP counters come from the cluster's status.
        """
        cluster = FakeCluster()
        self.metrics.watch_cluster(cluster)
        self.assertEqual(value(self.metrics, "caxton_cluster_members", state="dead"), 2)
        self.assertEqual(value(self.metrics, "caxton_cluster_partition", mode="minority"), 1)
        self.assertEqual(value(self.metrics, "caxton_cluster_partition", mode="majority"), 0)
        self.assertEqual(value(self.metrics, "caxton_cluster_expected_members"), 5)
        self.assertEqual(value(self.metrics, "caxton_swim_local_health"), 3)
        self.assertEqual(value(self.metrics, "caxton_swim_probes_total"), 40)
        self.assertEqual(value(self.metrics, "caxton_swim_suspicions_total"), 5)
        self.assertEqual(value(self.metrics, "caxton_swim_refutations_total"), 1)
        self.assertEqual(value(self.metrics, "caxton_gossip_packets_dropped_total", reason="unauthenticated"), 6)
        self.assertEqual(value(self.metrics, "caxton_gossip_packets_dropped_total", reason="undecodable"), 3)
        self.assertEqual(value(self.metrics, "caxton_gossip_packets_total", direction="in"), 100)
        self.assertEqual(value(self.metrics, "caxton_swim_push_pulls_total", result="failed"), 2)
        cluster.partition = "majority"
        self.assertEqual(value(self.metrics, "caxton_cluster_partition", mode="majority"), 1)

    def test_standalone(self) -> None:
        """
        A node running alone is one alive member in the majority, without
        SWIM families.
        """
        from caxton.cluster.standalone import Standalone

        self.metrics.watch_cluster(Standalone(self.agents))
        found = samples(self.metrics)
        self.assertEqual(found[("caxton_cluster_members", (("state", "alive"),))], 1)
        self.assertEqual(found[("caxton_cluster_partition", (("mode", "majority"),))], 1)
        self.assertFalse([name for name, _ in found if name.startswith("caxton_swim_probes")])

    def test_gauges(self) -> None:
        """
        Gauges and queues registered by other parts of the node are read
        at scrape time; a name is registered once.
        """
        depths = {"n2": 4, "n3": 1}
        self.metrics.add_queue("peer_outbox", lambda: depths.values(), 1000)
        self.metrics.add_gauge(
            "caxton_stream_peers", "Peers with an open node stream.", ["state"], lambda: [(("ready",), len(depths))]
        )
        self.assertRaises(ValueError, self.metrics.add_gauge, "caxton_stream_peers", "again", [], lambda: [])
        self.assertEqual(value(self.metrics, "caxton_queue_depth", queue="peer_outbox"), 5)
        self.assertEqual(value(self.metrics, "caxton_queue_depth_max", queue="peer_outbox"), 4)
        self.assertEqual(value(self.metrics, "caxton_stream_peers", state="ready"), 2)
        depths["n4"] = 9
        self.assertEqual(value(self.metrics, "caxton_queue_depth_max", queue="peer_outbox"), 9)

    def test_failing_source(self) -> None:
        """
        A source that raises is logged and left out; the rest is served.
        """

        def broken() -> Any:
            raise RuntimeError("boom")

        self.metrics.add_gauge("caxton_broken", "Broken.", [], broken)
        found = samples(self.metrics)
        self.assertIn(("caxton_agents", (("state", "running"),)), found)
        self.assertFalse([name for name, _ in found if name == "caxton_broken"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_registries_apart(self) -> None:
        """
        Each node has its own registry: two in one process do not clash,
        and the process families can be left out.
        """
        other = NodeMetrics("other", "9.9")
        other.messages.routed("local", None)
        self.assertEqual(value(other, "caxton_messages_routed_total", where="local"), 1)
        self.assertEqual(value(self.metrics, "caxton_messages_routed_total", where="local"), 0)
        names = {name for name, _ in samples(other)}
        self.assertIn("python_info", names)
        self.assertNotIn("python_info", {name for name, _ in samples(self.metrics)})
