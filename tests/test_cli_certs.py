"""
Tests for the C{caxton} command's offline tools: C{certs init-ca},
C{certs issue}, C{gossip-key}, and its exit codes (SPEC 7).
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from typing import List, Tuple

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.trial.unittest import SynchronousTestCase

from caxton.cli.main import main
from caxton.cluster.pki import NodeTLS, node_id_of


def run(*argv: str) -> Tuple[int, str, str]:
    """
    Run C{caxton argv...} in-process; return (status, stdout, stderr).
    """
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


class CertsTests(SynchronousTestCase):
    """
    C{caxton certs} makes a PKI that works, and says clearly when it cannot.
    """

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.ca = os.path.join(self.base, "ca")

    def load(self, path: str) -> x509.Certificate:
        with open(path, "rb") as f:
            return x509.load_pem_x509_certificate(f.read())

    def test_init_ca_and_issue(self) -> None:
        """
        init-ca then issue: the node certificate verifies against the CA,
        carries the node id and the hosts, and the node's TLS directory
        loads; the keys are private to the owner.
        """
        status, out, err = run("certs", "init-ca", "--dir", self.ca, "--cluster", "prod")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("prod", out)
        self.assertEqual(os.stat(os.path.join(self.ca, "ca.key")).st_mode & 0o777, 0o600)
        node_dir = os.path.join(self.base, "n1")
        status, out, err = run(
            "certs", "issue", "Node_1", "--ca-dir", self.ca, "--out", node_dir,
            "--host", "10.0.0.1", "--host", "n1.example", "--days", "30",
        )
        self.assertEqual((status, err), (0, ""))
        self.assertIn("Node_1", out)
        ca = self.load(os.path.join(self.ca, "ca.pem"))
        cert = self.load(os.path.join(node_dir, "node.pem"))
        cert.verify_directly_issued_by(ca)
        self.assertEqual(node_id_of(cert), "Node_1")
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(
            set(eku), {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        )
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["n1.example"])
        self.assertEqual([str(a) for a in sans.get_values_for_type(x509.IPAddress)], ["10.0.0.1"])
        self.assertEqual(self.load(os.path.join(node_dir, "ca.pem")), ca)
        self.assertEqual(os.stat(os.path.join(node_dir, "node.key")).st_mode & 0o777, 0o600)
        self.assertEqual(NodeTLS(node_dir).node_id, "Node_1")

    def test_default_directories(self) -> None:
        """
        Without --dir, --ca-dir and --out, the CA goes to ./caxton-ca and
        the node's files to ./caxton-tls/NODE_ID.
        """
        cwd = os.getcwd()
        os.chdir(self.base)
        self.addCleanup(os.chdir, cwd)
        self.assertEqual(run("certs", "init-ca")[0], 0)
        self.assertEqual(run("certs", "issue", "n1")[0], 0)
        self.assertTrue(os.path.exists(os.path.join(self.base, "caxton-ca", "ca.key")))
        self.assertEqual(NodeTLS(os.path.join(self.base, "caxton-tls", "n1")).node_id, "n1")

    def test_init_ca_refuses_to_overwrite(self) -> None:
        """
        A second init-ca fails with status 1 and says how to force it; with
        --force it makes a new CA.
        """
        self.assertEqual(run("certs", "init-ca", "--dir", self.ca)[0], 0)
        first = self.load(os.path.join(self.ca, "ca.pem"))
        status, out, err = run("certs", "init-ca", "--dir", self.ca)
        self.assertEqual(status, 1)
        self.assertEqual(
            err, f"caxton: a CA already exists in {self.ca} (use --force to replace it)\n"
        )
        self.assertEqual(self.load(os.path.join(self.ca, "ca.pem")), first)
        self.assertEqual(run("certs", "init-ca", "--dir", self.ca, "--force")[0], 0)
        self.assertNotEqual(self.load(os.path.join(self.ca, "ca.pem")), first)

    def test_issue_without_ca(self) -> None:
        """
        Issuing from a directory with no CA fails with status 1 and one
        line pointing at init-ca.
        """
        status, out, err = run("certs", "issue", "n1", "--ca-dir", self.ca, "--out", self.base)
        self.assertEqual(status, 1)
        self.assertEqual(err, f"caxton: no CA in {self.ca} (run caxton certs init-ca first)\n")

    def test_misuse(self) -> None:
        """
        Bad arguments exit 2 with a message: a bad node id, a bad cluster
        name, zero days, a missing NODE_ID, no command at all.
        """
        self.assertEqual(run("certs", "init-ca", "--dir", self.ca)[0], 0)
        cases: List[Tuple[str, ...]] = [
            ("certs", "issue", "bad id", "--ca-dir", self.ca),
            ("certs", "issue", "-x", "--ca-dir", self.ca),
            ("certs", "issue", "a" * 64, "--ca-dir", self.ca),
            ("certs", "init-ca", "--dir", self.base, "--cluster", "a b"),
            ("certs", "issue", "n1", "--ca-dir", self.ca, "--days", "0"),
            ("certs", "issue"),
            ("certs",),
            (),
            ("no-such-command",),
        ]
        for argv in cases:
            status, out, err = run(*argv)
            self.assertEqual(status, 2, argv)
            self.assertTrue(err.strip(), argv)
            self.assertNotIn("Traceback", err)

    def test_help(self) -> None:
        """
        --help exits 0 and lists the commands.
        """
        status, out, err = run("--help")
        self.assertEqual(status, 0)
        self.assertIn("certs", out)
        self.assertIn("gossip-key", out)


class GossipKeyTests(SynchronousTestCase):
    """
    C{caxton gossip-key} prints a usable key.
    """

    def test_key(self) -> None:
        """
        The output is one line of base64 for 32 bytes, new every time.
        """
        status, out, err = run("gossip-key")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(len(out.splitlines()), 1)
        self.assertEqual(len(base64.b64decode(out.strip(), validate=True)), 32)
        self.assertNotEqual(out, run("gossip-key")[1])


class ProcessTests(SynchronousTestCase):
    """
    The module runs as a program, with the same exit codes.
    """

    def caxton(self, *argv: str) -> "subprocess.CompletedProcess[str]":
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        return subprocess.run(
            [sys.executable, "-m", "caxton.cli.main", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    def test_exit_codes(self) -> None:
        """
        0 on success, 1 for a missing CA, 2 for misuse, with the message on
        stderr and no traceback.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        ca = os.path.join(base, "ca")
        done = self.caxton("certs", "init-ca", "--dir", ca)
        self.assertEqual(done.returncode, 0, done.stderr)
        done = self.caxton("certs", "issue", "n1", "--ca-dir", os.path.join(base, "none"))
        self.assertEqual(done.returncode, 1)
        self.assertIn("no CA in", done.stderr)
        self.assertNotIn("Traceback", done.stderr)
        done = self.caxton("certs", "issue", "bad id", "--ca-dir", ca)
        self.assertEqual(done.returncode, 2)
        self.assertNotIn("Traceback", done.stderr)
