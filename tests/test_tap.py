"""
Tests for the twistd plugin, L{caxton.tap} and L{caxton.node}.
"""

from twisted.application.service import IService, IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from caxton.node import build_node
from caxton.tap import Options


class PluginTests(SynchronousTestCase):
    """
    C{twistd caxton} is found and builds a node.
    """

    def plugin(self):
        makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "caxton"]
        self.assertTrue(makers, "no caxton plugin found")
        return makers[0]

    def test_discovered(self) -> None:
        """
        getPlugins finds a C{caxton} service maker providing both interfaces.
        """
        maker = self.plugin()
        verifyObject(IPlugin, maker)
        verifyObject(IServiceMaker, maker)

    def test_options_parse(self) -> None:
        """
        The plugin's Options parse a full command line into the config.
        """
        options = self.plugin().options()
        options.parseOptions(
            ["--node-id", "n1", "--data-dir", "/tmp/x", "--api", "tcp:1:interface=127.0.0.1", "--api", "tcp:2"]
        )
        self.assertEqual(options.config["node_id"], "n1")
        self.assertEqual(options.config["data_dir"], "/tmp/x")
        self.assertEqual(options.config["api"], ("tcp:1:interface=127.0.0.1", "tcp:2"))

    def test_bad_option_is_one_line(self) -> None:
        """
        A bad value exits with one line naming the key, not a usage dump.
        """
        options = Options()
        with self.assertRaises(SystemExit) as caught:
            options.parseOptions(["--node-id", "bad id!"])
        message = str(caught.exception.code)
        self.assertIn("node_id", message)
        self.assertNotIn("\n", message)

    def test_named_children(self) -> None:
        """
        makeService returns one IService whose named children start in order:
        store, runtime, agents, retention, audit, observability, then one
        listener per --api.
        """
        options = Options()
        options.parseOptions(["--data-dir", self.mktemp(), "--api", "tcp:0", "--api", "tcp:0"])
        service = build_node(options.config, MemoryReactorClock())
        verifyObject(IService, service)
        self.assertEqual(
            [child.name for child in service],
            ["store", "runtime", "agents", "retention", "audit", "observability", "api-0", "api-1"],
        )

    def test_clustered_children(self) -> None:
        """
        With --bind, a C{cluster} child comes after the agents (whose
        entries it publishes) and before the API; the cluster options set
        their config keys.
        """
        options = Options()
        options.parseOptions(
            [
                "--data-dir", self.mktemp(),
                "--bind", "127.0.0.1:7000",
                "--advertise", "10.0.0.1:7000",
                "--join", "10.0.0.2:7946,10.0.0.3",
                "--tls-dir", "/tls",
                "--gossip-key-file", "/gossip.key",
                "--profile", "wan",
            ]
        )
        config = options.config
        self.assertEqual(config["bind"], ("127.0.0.1", 7000))
        self.assertEqual(config["gossip.seeds"], (("10.0.0.2", 7946), ("10.0.0.3", 7946)))
        self.assertEqual((config["tls_dir"], config["gossip.key_file"], config["gossip.profile"]),
                         ("/tls", "/gossip.key", "wan"))
        service = build_node(config, MemoryReactorClock())
        self.assertEqual(
            [child.name for child in service],
            ["store", "runtime", "courier", "agents", "cluster", "retention", "audit", "observability", "api-0"],
        )
        self.assertEqual(service.getServiceNamed("cluster").swim_config.probe_interval, 5.0)


class EndpointErrorTests(SynchronousTestCase):
    """
    A bad endpoint string is a configuration error, on one line.
    """

    def test_bad_api_endpoint(self) -> None:
        """
        makeService exits with one line naming the bad --api value.
        """
        from caxton.tap import makeService

        options = Options()
        options.parseOptions(["--data-dir", self.mktemp(), "--api", "bogus:1"])
        with self.assertRaises(SystemExit) as caught:
            makeService(options)
        message = str(caught.exception.code)
        self.assertIn("bogus:1", message)
        self.assertNotIn("\n", message)
