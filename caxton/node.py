# -*- test-case-name: tests.test_tap -*-
"""
Assembling a node from its configuration.

The one place that knows every part: it builds the store, the wasm runtime
and its workers, the agent manager, the router and the API, and puts them
under one L{CaxtonService} in the order they start.  Constructors do no
I/O, so building a node is cheap and safe in tests; the data directory is
made when the store starts.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.internet import TimerService

from caxton.agents.executor import ThreadWorkers
from caxton.agents.manager import AgentManager
from caxton.agents.runtime import WasmRuntime
from caxton.api.app import CaxtonAPI
from caxton.auth.resource import Guard
from caxton import __version__
from caxton.cluster.standalone import Standalone
from caxton.config import Config, ConfigError
from caxton.observability.events import AgentEvents, EventHub, MembershipEvents
from caxton.observability.metrics import NodeMetrics
from caxton.observability.service import ObservabilityService
from caxton.observability.web import MeasuredResource
from caxton.endpoints import listener_service
from caxton.router.router import Router
from caxton.service import CaxtonService, RuntimeService, StoreService, ToolsService, data_paths
from caxton.store.sqlite import SQLiteStore

#: How often retention runs over conversations, mailboxes and dead letters.
RETENTION_INTERVAL = 3600.0


class _DataDirStore(SQLiteStore):
    """
    A store that makes its data directory when it opens.
    """

    def open(self) -> Any:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        return super().open()


def build_node(config: Config, reactor: Any) -> CaxtonService:
    """
    Build one node's service tree from C{config}.
    """
    paths = data_paths(config["data_dir"])
    store = _DataDirStore(
        paths["database"],
        reactor,
        max_messages_per_conversation=config["conversations.max_messages"],
        retention_seconds=config["conversations.retention"],
        max_dead_letters=config["dead_letters.max"],
    )
    runtime = WasmRuntime(cache_dir=paths["compiled"])
    workers = ThreadWorkers(reactor, config["agents.workers"])
    agents = AgentManager(
        reactor, runtime, workers, store, config.agent_defaults, config["node_id"]
    )
    tools = None
    if config["mcp.servers"]:
        # Imported here: a node without MCP servers loads no MCP client.
        from caxton.mcp.gateway import McpServerConfig, ToolGateway

        tools = ToolGateway(
            reactor,
            [McpServerConfig(*server) for server in config["mcp.servers"]],
            timeout=config["mcp.timeout"],
        )
    # Observability (SPEC 10): the node's metrics and event stream.
    metrics = NodeMetrics(config["node_id"], __version__)
    events = EventHub(
        reactor,
        capacity=config["events.buffer"],
        max_subscribers=config["events.max_subscribers"],
        max_pending=config["events.max_pending"],
        keepalive=config["events.keepalive"],
    )
    router = Router(reactor, agents, store, tools=tools, observer=metrics.messages)
    # Tor, when an onion: listener or an onion seed needs it (docs/tor.md).
    from caxton.tor import from_config as tor_from_config

    tor = tor_from_config(config, reactor)
    if config["streams.listen"] and not config.clustered:
        raise ConfigError("streams.listen: node streams run only in a cluster (set bind)")
    root = CaxtonService(reactor, router, config["shutdown_grace"])
    cluster = None
    if config.clustered:
        # Imported here: a node that runs alone loads no cluster code.
        from caxton.cluster.service import ClusterService

        cluster = ClusterService(reactor, config, agents, store, router, tor=tor)
        cluster.listeners.append(MembershipEvents(events))
    metrics.watch_agents(agents)
    metrics.watch_cluster(cluster if cluster is not None else Standalone(agents))
    if cluster is not None and cluster.courier is not None:
        courier = cluster.courier
        metrics.add_queue("outbox", lambda: courier.queues().values(), config["cluster.max_queue"])
        metrics.add_gauge(
            "caxton_cluster_messages",
            "Messages between nodes, by what happened to them (courier counters).",
            ["event"],
            lambda: [((event,), float(count)) for event, count in sorted(courier.counters.items())],
        )
    # API keys, rate limits, the audit log, slow clients (docs/security.md).
    guard = Guard(config, reactor, CaxtonAPI.app.url_map)
    api = CaxtonAPI(
        reactor,
        agents,
        router,
        store,
        invoke_timeout=config["http.invoke_timeout"],
        max_wait=config["http.max_wait"],
        ready=lambda: root.ready,
        cluster=cluster,
        tools=tools,
        keys=guard.keys,
        audit=guard.audit,
        metrics=metrics,
        events=events,
        onions=tor.onions if tor is not None else None,
    )

    StoreService(store).setServiceParent(root)
    RuntimeService(runtime, workers).setServiceParent(root)
    if cluster is not None and cluster.courier is not None:
        # Before the agents: what the delivery journal hands back at start
        # may be bound for other nodes.
        cluster.courier.setServiceParent(root)
    agents.setServiceParent(root)
    if tools is not None:
        ToolsService(tools).setServiceParent(root)
    if tor is not None:
        tor.setServiceParent(root)
    if cluster is not None:
        cluster.setServiceParent(root)
    retention = TimerService(RETENTION_INTERVAL, lambda: store.expire(reactor.seconds()))
    retention.setName("retention")
    retention.clock = reactor
    retention.setServiceParent(root)
    guard.service.setServiceParent(root)
    # After the agents are loaded (restoring them is no event); stopped
    # before the others, ending the event streams.
    ObservabilityService(events, AgentEvents(events, config["node_id"]), agents).setServiceParent(root)
    for i, description in enumerate(config["api"]):
        # Metrics outermost, so requests refused by the guard are counted too.
        site = guard.site(
            api.resource(),
            description,
            wrap=lambda inner: MeasuredResource(inner, metrics.api, CaxtonAPI.app.url_map, reactor),
        )
        # TCP and the like bind at once (a port in use fails the start);
        # an onion: listener is up when Tor accepted it (caxton/endpoints.py).
        listener = listener_service(reactor, description, "api", site, tor)
        listener.setName(f"api-{i}")
        listener.setServiceParent(root)
    return root
