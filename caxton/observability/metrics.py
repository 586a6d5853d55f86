# -*- test-case-name: tests.test_observability_metrics -*-
"""
Prometheus metrics of one node (SPEC 10), served at C{GET /metrics}.

Each node has its own L{CollectorRegistry} (never the process-wide one), so
tests can run several nodes in one process.  Most values are read when
Prometheus scrapes, from state the node keeps anyway: agents by state and
their inboxes from the agent manager, members, partition mode, local health
and the SWIM and UDP counters from the cluster's C{status()}.  Only what
happens per message or per request is counted as it happens, and the
per-message part (L{MessageMetrics}) is plain integer arithmetic, cheap
enough for the router's hot path; it becomes Prometheus families at scrape
time.

The families and what to alert on are listed in docs/operations.md.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from prometheus_client import CollectorRegistry, Counter as PromCounter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.logger import Logger
from zope.interface import implementer

from caxton.observability.interfaces import IMessageObserver

log = Logger()

#: Bounds of the message latency histogram, in seconds: 50 us to 5 s.
LATENCY_BUCKETS: Tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

_FIRST_BOUND = LATENCY_BUCKETS[0]

#: Bounds of the API request duration histogram, in seconds.
API_BUCKETS: Tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: Where a routed message went; always exported, so rates start at zero.
WHERE = ("local", "remote", "client", "tool")

#: Distinct failure reasons kept as labels; further ones count as C{other}.
MAX_REASONS = 64

#: Agent states, always exported.
AGENT_STATES = ("deploying", "running", "stopped", "failed", "draining")

MEMBER_STATES = ("alive", "suspect", "dead", "left")
PARTITION_MODES = ("majority", "minority", "isolated")

#: SWIM counters exported as their own families: (family, stat, help).
_SWIM_COUNTERS = (
    ("caxton_swim_probes", "probes", "Probes this node started."),
    ("caxton_swim_probe_failures", "probe_failures", "Probes that ended with the member suspected."),
    ("caxton_swim_suspicions", "suspicions", "Members this node marked suspect."),
    ("caxton_swim_refutations", "refutations", "Suspicions about this node that it refuted."),
    ("caxton_swim_deaths", "deaths", "Members this node declared dead."),
    ("caxton_swim_lag_events", "lag_events", "Reactor lag reports above gossip.lag_threshold."),
)


@implementer(IMessageObserver)
class MessageMetrics:
    """
    Messages routed and failed, and routing latency: the router's
    L{IMessageObserver}.  Counts are kept as plain numbers (one dict
    increment and one bisect per message) and turned into Prometheus
    families by L{collect}.  Reactor thread only.
    """

    def __init__(self) -> None:
        # Plain dicts: a Counter's += costs several times a dict's.
        self._routed: Dict[str, int] = dict.fromkeys(WHERE, 0)
        self._failed: Counter = Counter()
        self._buckets: List[int] = [0] * (len(LATENCY_BUCKETS) + 1)
        self._sum = 0.0

    def routed(self, where: str, latency: Optional[float]) -> None:
        routed = self._routed
        routed[where] = routed.get(where, 0) + 1
        if latency is not None:
            # Most routing takes less than the first bound: skip the search.
            index = 0 if latency <= _FIRST_BOUND else bisect_left(LATENCY_BUCKETS, latency)
            self._buckets[index] += 1
            self._sum += latency

    def failed(self, reason: str) -> None:
        if reason not in self._failed and len(self._failed) >= MAX_REASONS:
            reason = "other"
        self._failed[reason] += 1

    def collect(self) -> Iterator[Metric]:
        """
        The families: C{caxton_messages_routed_total},
        C{caxton_messages_failed_total}, C{caxton_message_latency_seconds}.
        """
        routed = CounterMetricFamily(
            "caxton_messages_routed", "Messages handed to their receiver, by where it is.", labels=["where"]
        )
        for where in sorted(self._routed):
            routed.add_metric([where], self._routed[where])
        yield routed
        failed = CounterMetricFamily(
            "caxton_messages_failed",
            "Messages that ended in a failure (a dead letter), by reason.",
            labels=["reason"],
        )
        for reason in sorted(self._failed):
            failed.add_metric([reason], self._failed[reason])
        yield failed
        buckets = []
        total = 0
        for bound, count in zip(LATENCY_BUCKETS, self._buckets):
            total += count
            buckets.append((_bound(bound), total))
        total += self._buckets[-1]
        buckets.append(("+Inf", total))
        yield HistogramMetricFamily(
            "caxton_message_latency_seconds",
            "Seconds from the router accepting a message to handing it to its receiver "
            "(a local agent's inbox, a client's mailbox, the node stream).",
            buckets=buckets,
            sum_value=self._sum,
        )


def _bound(value: float) -> str:
    return repr(float(value))


class APIMetrics:
    """
    API requests by method, route template and status code, and their
    durations; counted by L{caxton.observability.web.MeasuredResource}.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = PromCounter(
            "caxton_api_requests",
            "API requests answered, by method, route template and status code "
            "(499: the client went away first).",
            ["method", "route", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "caxton_api_request_duration_seconds",
            "Seconds from a request reaching the API to its response being finished.",
            ["method", "route"],
            buckets=API_BUCKETS,
            registry=registry,
        )

    def finished(self, method: str, route: str, code: int, seconds: float) -> None:
        """
        Count one finished request.
        """
        self.requests.labels(method, route, str(code)).inc()
        self.duration.labels(method, route).observe(max(0.0, seconds))


#: A gauge callback: C{(label values, value)} pairs.
GaugeCallback = Callable[[], Iterable[Tuple[Sequence[str], float]]]


class _Gauge:
    def __init__(self, name: str, documentation: str, labels: Sequence[str], callback: GaugeCallback) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        self.callback = callback


class _ScrapeCollector:
    """
    Everything read at scrape time: agents, queues, the cluster, and the
    gauges other parts of the node registered.  A source that fails is
    logged and left out of that scrape; the others are still served.
    """

    def __init__(self, node_id: str, version: str) -> None:
        self._node_id = node_id
        self._version = version
        self.agents: Any = None
        self.cluster: Any = None
        self.queues: Dict[str, Tuple[Callable[[], Iterable[int]], Optional[int]]] = {}
        self.gauges: Dict[str, _Gauge] = {}

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("caxton_node_info", "This node: its id and Caxton version.", labels=["node", "version"])
        info.add_metric([self._node_id, self._version], 1)
        yield info
        for source in (self._agents, self._queues, self._cluster, self._gauges):
            try:
                families = list(source())
            except Exception:
                log.failure("collecting metrics from {source}", source=source.__name__)
                continue
            yield from families

    def _agents(self) -> Iterator[Metric]:
        agents = self.agents
        if agents is None:
            return
        states: Counter = Counter(cell.status for cell in agents)
        states["deploying"] += len(agents.deploying())
        family = GaugeMetricFamily("caxton_agents", "Agents hosted on this node, by state.", labels=["state"])
        for state in sorted(set(AGENT_STATES) | set(states)):
            family.add_metric([state], states[state])
        yield family

    def _queues(self) -> Iterator[Metric]:
        if not self.queues:
            return
        depth = GaugeMetricFamily(
            "caxton_queue_depth", "Messages waiting, summed over every queue of a kind.", labels=["queue"]
        )
        deepest = GaugeMetricFamily(
            "caxton_queue_depth_max", "Messages waiting in the fullest queue of a kind.", labels=["queue"]
        )
        limit = GaugeMetricFamily(
            "caxton_queue_limit", "Most messages one queue of a kind may hold.", labels=["queue"]
        )
        for name in sorted(self.queues):
            depths, most = self.queues[name]
            values = list(depths())
            depth.add_metric([name], sum(values))
            deepest.add_metric([name], max(values, default=0))
            if most is not None:
                limit.add_metric([name], most)
        yield depth
        yield deepest
        yield limit

    def _cluster(self) -> Iterator[Metric]:
        cluster = self.cluster
        if cluster is None:
            return
        status = cluster.status()
        members = GaugeMetricFamily("caxton_cluster_members", "Members as this node sees them, by state.", labels=["state"])
        counts = status.get("members", {})
        for state in MEMBER_STATES:
            members.add_metric([state], counts.get(state, 0))
        yield members
        partition = GaugeMetricFamily(
            "caxton_cluster_partition",
            "This node's partition mode: 1 for the current mode, 0 for the others.",
            labels=["mode"],
        )
        current = status.get("partition")
        for mode in PARTITION_MODES:
            partition.add_metric([mode], 1 if mode == current else 0)
        yield partition
        yield GaugeMetricFamily(
            "caxton_swim_local_health",
            "Lifeguard's local health score: 0 is healthy; each step slows probing.",
            value=status.get("local_health", 0),
        )
        if "expected" in status:
            yield GaugeMetricFamily(
                "caxton_cluster_expected_members",
                "The cluster size partition mode is reckoned against (the largest seen, less members that left).",
                value=status["expected"],
            )
        counters = status.get("counters")
        if not counters:
            # A node that runs alone: no SWIM.
            return
        swim = counters.get("swim", {})
        for family, stat, documentation in _SWIM_COUNTERS:
            yield CounterMetricFamily(family, documentation, value=swim.get(stat, 0))
        udp = counters.get("udp", {})
        packets = CounterMetricFamily(
            "caxton_gossip_packets", "SWIM datagrams sent and received.", labels=["direction"]
        )
        packets.add_metric(["in"], udp.get("packets_in", 0))
        packets.add_metric(["out"], udp.get("packets_out", 0))
        yield packets
        gossip_bytes = CounterMetricFamily(
            "caxton_gossip_bytes", "Bytes of SWIM datagrams sent and received.", labels=["direction"]
        )
        gossip_bytes.add_metric(["in"], udp.get("bytes_in", 0))
        gossip_bytes.add_metric(["out"], udp.get("bytes_out", 0))
        yield gossip_bytes
        dropped = CounterMetricFamily(
            "caxton_gossip_packets_dropped",
            "SWIM datagrams dropped, by reason (malformed, unauthenticated, replayed, too_large: "
            "refused by the envelope; undecodable: opened but not a SWIM packet).",
            labels=["reason"],
        )
        for key in sorted(udp):
            if key.startswith("drops_"):
                dropped.add_metric([key[len("drops_"):]], udp[key])
        dropped.add_metric(["undecodable"], swim.get("malformed_dropped", 0))
        yield dropped
        push_pulls = CounterMetricFamily(
            "caxton_swim_push_pulls", "Full state exchanges this node started, by result.", labels=["result"]
        )
        push_pulls.add_metric(["ok"], swim.get("push_pulls", 0))
        push_pulls.add_metric(["failed"], swim.get("push_pull_failures", 0))
        yield push_pulls

    def _gauges(self) -> Iterator[Metric]:
        for name in sorted(self.gauges):
            gauge = self.gauges[name]
            family = GaugeMetricFamily(name, gauge.documentation, labels=gauge.labels)
            for labels, value in gauge.callback():
                family.add_metric([str(v) for v in labels], value)
            yield family


class NodeMetrics:
    """
    The metrics of one node and their registry.

    @param node_id: this node's id, for C{caxton_node_info}.
    @param version: Caxton's version, likewise.
    @param process: whether to add the process, platform and garbage
        collector families of C{prometheus_client} (C{process_*},
        C{python_*}).

    @ivar registry: the node's own L{CollectorRegistry}.
    @ivar messages: the router's L{IMessageObserver}.
    @ivar api: the API's request counters, for
        L{caxton.observability.web.MeasuredResource}.
    """

    def __init__(self, node_id: str, version: str, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.messages = MessageMetrics()
        self.api = APIMetrics(self.registry)
        self._scraped = _ScrapeCollector(node_id, version)
        self.registry.register(self.messages)
        self.registry.register(self._scraped)
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def watch_agents(self, agents: Any) -> None:
        """
        Export C{agents}' states and inbox depths (an agent manager: its
        cells, C{deploying()} and C{defaults.max_queue}).
        """
        self._scraped.agents = agents
        self.add_queue("agent_inbox", lambda: (len(cell.inbox) for cell in agents), agents.defaults.max_queue)

    def watch_cluster(self, cluster: Any) -> None:
        """
        Export what C{cluster} (an L{caxton.cluster.interfaces.ICluster})
        says in its C{status()}: members, partition mode, local health and
        the SWIM and UDP counters.
        """
        self._scraped.cluster = cluster

    def add_queue(self, queue: str, depths: Callable[[], Iterable[int]], limit: Optional[int] = None) -> None:
        """
        Export a kind of queue as C{caxton_queue_depth{queue=...}} (the sum),
        C{caxton_queue_depth_max} (the fullest one) and, with a C{limit},
        C{caxton_queue_limit}.

        @param depths: called at scrape time; the depth of each queue of
            this kind (each agent's inbox, each peer's outbox, ...).
        """
        self._scraped.queues[queue] = (depths, limit)

    def add_gauge(self, name: str, documentation: str, labels: Sequence[str], callback: GaugeCallback) -> None:
        """
        Export a gauge family read at scrape time.

        @param callback: returns C{(label values, value)} pairs, one per
            series; keep label values few (never a message id).
        @raise ValueError: if a gauge of that name is already registered.
        """
        if name in self._scraped.gauges:
            raise ValueError(f"gauge {name} is already registered")
        self._scraped.gauges[name] = _Gauge(name, documentation, labels, callback)

    def exposition(self, accept: Optional[str] = None) -> Tuple[bytes, str]:
        """
        Every family, in the format the scraper's C{Accept} header asks for
        (as C{prometheus_client}'s own handlers choose it): OpenMetrics, or
        Prometheus text, by default in its 0.0.4 version, which every
        Prometheus reads.

        @return: the body and its content type.
        """
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
