"""
Tests for L{caxton.api.routes}: every route the API serves has a role.
"""

from twisted.trial.unittest import SynchronousTestCase

from caxton.api.app import CaxtonAPI
from caxton.api.routes import POLICY, Role, match


def _served():
    """
    Every (method, template) the API's Klein app serves.
    """
    served = set()
    for rule in CaxtonAPI.app.url_map.iter_rules():
        for method in rule.methods or ():
            if method in ("HEAD", "OPTIONS"):
                continue
            served.add((method, rule.rule))
    return served


class PolicyTests(SynchronousTestCase):
    def test_every_route_has_a_role(self):
        """
        No route is served without a line in the policy table.
        """
        self.assertEqual(_served() - set(POLICY), set())

    def test_match_gives_template(self):
        """
        A request is matched to its template, with arguments.
        """
        route = match(CaxtonAPI.app.url_map, b"DELETE", b"/api/v1/agents/echo")
        self.assertEqual(route.template, "/api/v1/agents/<name>")
        self.assertEqual(route.role, Role.OPERATOR)
        self.assertEqual(route.arguments, {"name": "echo"})

    def test_head_is_get(self):
        route = match(CaxtonAPI.app.url_map, b"HEAD", b"/health")
        self.assertEqual((route.method, route.role), ("GET", Role.PUBLIC))

    def test_no_route(self):
        """
        An unknown path, or a known path with a method it does not serve,
        matches nothing.
        """
        self.assertIsNone(match(CaxtonAPI.app.url_map, b"GET", b"/nowhere"))
        self.assertIsNone(match(CaxtonAPI.app.url_map, b"PATCH", b"/api/v1/agents"))

    def test_role_names(self):
        self.assertEqual(Role.named("Operator"), Role.OPERATOR)
        self.assertRaises(ValueError, Role.named, "root")
        self.assertRaises(ValueError, Role.named, "public")
