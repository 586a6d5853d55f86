"""
Tests for L{caxton.config}: sources, precedence and one-line errors.
"""

from twisted.trial.unittest import SynchronousTestCase

from caxton.config import KEYS, ConfigError, load, parse_duration, parse_size


class ParseTests(SynchronousTestCase):
    """
    Durations and sizes read as the SPEC writes them.
    """

    def test_durations(self) -> None:
        """
        C{200ms}, C{1s}, C{5m}, C{2h}, C{7d} and bare seconds are understood.
        """
        self.assertEqual(parse_duration("200ms"), 0.2)
        self.assertEqual(parse_duration("1s"), 1.0)
        self.assertEqual(parse_duration("5m"), 300.0)
        self.assertEqual(parse_duration("2h"), 7200.0)
        self.assertEqual(parse_duration("7d"), 7 * 86400.0)
        self.assertEqual(parse_duration(3), 3.0)

    def test_bad_durations(self) -> None:
        """
        Garbage, zero and booleans are refused with a hint.
        """
        for bad in ("5x", "", "0s", True, "-1s"):
            with self.assertRaises(ValueError):
                parse_duration(bad)

    def test_sizes(self) -> None:
        """
        Binary and decimal units, and bare bytes.
        """
        self.assertEqual(parse_size("256KiB"), 256 * 1024)
        self.assertEqual(parse_size("16MiB"), 16 * 1024 * 1024)
        self.assertEqual(parse_size("1GB"), 10**9)
        self.assertEqual(parse_size(512), 512)
        for bad in ("12 apples", "0", False):
            with self.assertRaises(ValueError):
                parse_size(bad)


class LoadTests(SynchronousTestCase):
    """
    L{load} merges option > environment > file > default.
    """

    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults(self) -> None:
        """
        With nothing given, every key has its documented default.
        """
        config = load({}, {}, None)
        self.assertEqual(config["data_dir"], "./caxton-data")
        self.assertEqual(config["api"], ("tcp:8080:interface=127.0.0.1",))
        self.assertEqual(config["agents.memory"], 16 * 1024 * 1024)
        self.assertEqual(config["agents.wall_clock"], 1.0)
        self.assertEqual(config["agents.max_message"], 256 * 1024)
        self.assertEqual(set(config.values), {k.path for k in KEYS})

    def test_precedence(self) -> None:
        """
        An option beats the environment, which beats the file.
        """
        path = self.write("agents:\n  wall_clock: 3s\n  memory: 8MiB\nnode_id: from-file\n")
        env = {"CAXTON_AGENTS_WALL_CLOCK": "2s", "CAXTON_NODE_ID": "from-env"}
        config = load({"node_id": "from-option"}, env, path)
        self.assertEqual(config["node_id"], "from-option")
        self.assertEqual(config["agents.wall_clock"], 2.0)
        self.assertEqual(config["agents.memory"], 8 * 1024 * 1024)

    def test_environment_list(self) -> None:
        """
        A list key takes a comma-separated environment value.
        """
        config = load({}, {"CAXTON_API": "tcp:1:interface=127.0.0.1, tcp:2"}, None)
        self.assertEqual(config["api"], ("tcp:1:interface=127.0.0.1", "tcp:2"))

    def test_bad_value_names_key_and_source(self) -> None:
        """
        A bad value gives one line naming the key, the source and the fault.
        """
        with self.assertRaises(ConfigError) as caught:
            load({}, {"CAXTON_AGENTS_WALL_CLOCK": "soon"}, None)
        text = str(caught.exception)
        self.assertIn("agents.wall_clock", text)
        self.assertIn("CAXTON_AGENTS_WALL_CLOCK", text)
        self.assertIn("'soon' is not a duration", text)
        self.assertNotIn("\n", text)

    def test_unknown_key_in_file(self) -> None:
        """
        A misspelt key in the file is refused rather than ignored.
        """
        path = self.write("agents:\n  wallclock: 1s\n")
        with self.assertRaises(ConfigError) as caught:
            load({}, {}, path)
        self.assertIn("unknown key 'agents.wallclock'", str(caught.exception))

    def test_bad_yaml(self) -> None:
        """
        A file that is not YAML says so with its line.
        """
        path = self.write("agents: [\n")
        with self.assertRaises(ConfigError) as caught:
            load({}, {}, path)
        self.assertIn("not valid YAML", str(caught.exception))

    def test_missing_file(self) -> None:
        """
        A config file that does not exist is named.
        """
        with self.assertRaises(ConfigError) as caught:
            load({}, {}, "/nonexistent/caxton.yaml")
        self.assertIn("/nonexistent/caxton.yaml", str(caught.exception))

    def test_shipped_example_is_complete(self) -> None:
        """
        etc/caxton.yaml sets every key, and loads.
        """
        import os

        import yaml

        from caxton.config import _flatten

        path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "etc", "caxton.yaml")
        with open(path) as f:
            keys = set(_flatten(yaml.safe_load(f)))
        self.assertEqual(keys, {k.path for k in KEYS})
        load({}, {}, path)


class ClusterKeyTests(SynchronousTestCase):
    """
    The cluster's address keys.
    """

    def test_addresses(self) -> None:
        """
        bind and seeds default to port 7946; advertise without a port takes
        the port bind got (0 until the node fills it in); IPv6 in brackets.
        """
        config = load(
            {"bind": "[::1]", "advertise": "10.0.0.1", "gossip.seeds": "a:7000,b"}, {}
        )
        self.assertEqual(config["bind"], ("::1", 7946))
        self.assertEqual(config["advertise"], ("10.0.0.1", 0))
        self.assertEqual(config["gossip.seeds"], (("a", 7000), ("b", 7946)))
        self.assertTrue(config.clustered)
        self.assertFalse(load({}, {}).clustered)
        for bad in ("a:99999", "[::1", "a b:1"):
            with self.assertRaises(ConfigError):
                load({"bind": bad}, {})

    def test_knobs(self) -> None:
        """
        SWIM knobs left unset take the profile's value; set ones override
        it, and counts that may be zero can be.
        """
        config = load({"gossip.indirect_checks": "0", "gossip.probe_interval": "2s"}, {})
        self.assertEqual(config.swim_overrides, {"indirect_checks": 0, "probe_interval": 2.0})


class McpKeyTests(SynchronousTestCase):
    """
    The MCP servers agents may use.
    """

    def test_servers(self) -> None:
        """
        A YAML list of mappings, or name=url pairs in the environment; the
        timeout is a duration.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("mcp:\n  servers:\n    - {name: state, url: 'http://127.0.0.1:9000/mcp', token_file: /t}\n"
                    "  timeout: 5s\n")
        config = load({}, {}, path)
        self.assertEqual(config["mcp.servers"], (("state", "http://127.0.0.1:9000/mcp", "/t"),))
        self.assertEqual(config["mcp.timeout"], 5.0)
        config = load({}, {"CAXTON_MCP_SERVERS": "a=http://h/mcp, b=https://k:1/x"})
        self.assertEqual([s[:2] for s in config["mcp.servers"]], [("a", "http://h/mcp"), ("b", "https://k:1/x")])
        self.assertEqual(load({}, {})["mcp.servers"], ())

    def test_bad_servers(self) -> None:
        """
        A missing url, a bad name, a duplicate name, a non-HTTP URL or an
        unknown field is one line naming the key.
        """
        for bad in ("state", "st ate=http://h", "a=http://h,a=http://k", "a=ftp://h"):
            with self.assertRaises(ConfigError) as caught:
                load({}, {"CAXTON_MCP_SERVERS": bad})
            self.assertIn("mcp.servers", str(caught.exception))
        with self.assertRaises(ConfigError):
            load({"mcp.servers": [{"name": "a", "url": "http://h", "extra": 1}]}, {})


class DefaultsTests(SynchronousTestCase):
    """
    Defaults that come from the machine.
    """

    def test_node_id_from_hostname(self) -> None:
        """
        Any host name makes a valid node id.
        """
        from caxton.config import _node_id, default_node_id

        for hostname, expected in (
            ("web-1.example.com", "web-1"),
            ("Büro PC", "B-ro-PC"),
            ("", "caxton"),
            ("...", "caxton"),
        ):
            self.assertEqual(default_node_id(hostname), expected)
            _node_id(default_node_id(hostname))

    def test_bare_numbers_are_seconds(self) -> None:
        """
        A duration without a unit is seconds, from any source.
        """
        config = load({}, {"CAXTON_SHUTDOWN_GRACE": "10"}, None)
        self.assertEqual(config["shutdown_grace"], 10.0)
