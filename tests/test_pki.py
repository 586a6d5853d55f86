"""
Tests for L{caxton.cluster.pki}: the cluster CA, node certificates, the
node id they carry, and L{NodeTLS}'s loading and reloading.
"""

from __future__ import annotations

import datetime
import os
import shutil

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from caxton.cluster import pki
from caxton.cluster.pki import NodeTLS, PKIError, TLSConfigError, node_id_of
from caxton.config import ConfigError


def _cert_with_sans(sans: list) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256())


class PKITestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.ca = os.path.join(self.base, "ca")

    def path(self, *parts: str) -> str:
        return os.path.join(self.base, *parts)


class InitCATests(PKITestCase):
    """
    L{pki.init_ca} makes a CA and protects an existing one.
    """

    def test_ca(self) -> None:
        """
        The CA is a self-signed P-256 CA certificate restricted to signing
        certificates, with its key readable by the owner only.
        """
        cert = pki.init_ca(self.ca, "prod", days=10)
        with open(os.path.join(self.ca, "ca.pem"), "rb") as f:
            self.assertEqual(x509.load_pem_x509_certificate(f.read()), cert)
        cert.verify_directly_issued_by(cert)
        self.assertIsInstance(cert.public_key(), ec.EllipticCurvePublicKey)
        self.assertIsInstance(cert.public_key().curve, ec.SECP256R1)
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(basic.critical)
        self.assertTrue(basic.value.ca)
        self.assertTrue(cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign)
        self.assertIn("prod", cert.subject.rfc4514_string())
        self.assertEqual(os.stat(os.path.join(self.ca, "ca.key")).st_mode & 0o777, 0o600)
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertLess(lifetime, datetime.timedelta(days=11))

    def test_refuses_overwrite(self) -> None:
        """
        An existing CA (even just its key) is not replaced unless forced.
        """
        first = pki.init_ca(self.ca)
        e = self.assertRaises(PKIError, pki.init_ca, self.ca)
        self.assertIn("--force", str(e))
        second = pki.init_ca(self.ca, force=True)
        self.assertNotEqual(first, second)
        lone = self.path("lone")
        os.makedirs(lone)
        open(os.path.join(lone, "ca.key"), "w").close()
        self.assertRaises(PKIError, pki.init_ca, lone)

    def test_bad_days(self) -> None:
        """
        Zero or negative lifetimes are refused.
        """
        self.assertRaises(PKIError, pki.init_ca, self.ca, days=0)


class IssueTests(PKITestCase):
    """
    L{pki.issue} makes node certificates that name their node.
    """

    def setUp(self) -> None:
        super().setUp()
        self.ca_cert = pki.init_ca(self.ca, "test")

    def test_issue(self) -> None:
        """
        The certificate is issued by the CA, names the node in a URI SAN,
        is good for TLS server and client, is no CA itself, and comes with
        the CA's certificate and an owner-only key.
        """
        out = self.path("n")
        hosts = ["10.1.2.3", "::1", "n.example"]
        cert = pki.issue(self.ca, "web-1.eu_west", out, days=5, hosts=hosts)
        cert.verify_directly_issued_by(self.ca_cert)
        self.assertEqual(node_id_of(cert), "web-1.eu_west")
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(
            sans.get_values_for_type(x509.UniformResourceIdentifier),
            ["caxton://node/web-1.eu_west"],
        )
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["n.example"])
        self.assertEqual(
            sorted(str(a) for a in sans.get_values_for_type(x509.IPAddress)), ["10.1.2.3", "::1"]
        )
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(
            set(eku), {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        )
        self.assertFalse(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        self.assertEqual(os.stat(os.path.join(out, "node.key")).st_mode & 0o777, 0o600)
        with open(os.path.join(out, "ca.pem"), "rb") as f:
            self.assertEqual(x509.load_pem_x509_certificate(f.read()), self.ca_cert)
        with open(os.path.join(out, "node.key"), "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        self.assertEqual(key.public_key().public_numbers(), cert.public_key().public_numbers())

    def test_case_and_underscore_kept(self) -> None:
        """
        Node ids differing only in case stay different (a DNS name would
        fold them).
        """
        a = pki.issue(self.ca, "Node_A", self.path("a"))
        b = pki.issue(self.ca, "node_a", self.path("b"))
        self.assertEqual((node_id_of(a), node_id_of(b)), ("Node_A", "node_a"))

    def test_lifetime_capped_by_ca(self) -> None:
        """
        A node certificate never outlives its CA.
        """
        shutil.rmtree(self.ca)
        ca = pki.init_ca(self.ca, days=3)
        cert = pki.issue(self.ca, "n", self.path("n"), days=400)
        self.assertLessEqual(cert.not_valid_after_utc, ca.not_valid_after_utc)

    def test_bad_node_ids(self) -> None:
        """
        Ids outside C{^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$} are refused.
        """
        for bad in ("", "-a", ".a", "a b", "a/b", "a" * 64, "é", "a:b"):
            self.assertRaises(PKIError, pki.issue, self.ca, bad, self.path("x"))

    def test_no_ca(self) -> None:
        """
        Issuing without a CA says to run init-ca.
        """
        e = self.assertRaises(PKIError, pki.issue, self.path("none"), "n", self.path("x"))
        self.assertEqual(str(e), f"no CA in {self.path('none')} (run caxton certs init-ca first)")

    def test_reissue_replaces(self) -> None:
        """
        Issuing again into the same directory renews the certificate and key.
        """
        first = pki.issue(self.ca, "n", self.path("n"))
        second = pki.issue(self.ca, "n", self.path("n"))
        self.assertNotEqual(first.serial_number, second.serial_number)
        self.assertEqual(NodeTLS(self.path("n")).node_id, "n")


class NodeIdOfTests(SynchronousTestCase):
    """
    L{node_id_of} reads only a well-formed, unambiguous node URI.
    """

    def test_none(self) -> None:
        """
        No certificate, no SAN, or only other names: no node.
        """
        self.assertIsNone(node_id_of(None))
        self.assertIsNone(node_id_of(_cert_with_sans([])))
        self.assertIsNone(node_id_of(_cert_with_sans([x509.DNSName("a.example")])))
        self.assertIsNone(
            node_id_of(_cert_with_sans([x509.UniformResourceIdentifier("https://node/a")]))
        )

    def test_ambiguous_or_invalid(self) -> None:
        """
        Two different node URIs, or an invalid id, name no node.
        """
        two = [
            x509.UniformResourceIdentifier("caxton://node/a"),
            x509.UniformResourceIdentifier("caxton://node/b"),
        ]
        self.assertIsNone(node_id_of(_cert_with_sans(two)))
        for bad in ("", "a/b", "-a", "a" * 64):
            uri = x509.UniformResourceIdentifier("caxton://node/" + bad)
            self.assertIsNone(node_id_of(_cert_with_sans([uri])))

    def test_pyopenssl(self) -> None:
        """
        A pyOpenSSL certificate works too.
        """
        cert = _cert_with_sans([x509.UniformResourceIdentifier("caxton://node/n_1")])
        self.assertEqual(node_id_of(crypto.X509.from_cryptography(cert)), "n_1")


class NodeTLSTests(PKITestCase):
    """
    L{NodeTLS} loads a node directory, says clearly what is wrong with a
    bad one, and reloads changed files.
    """

    def setUp(self) -> None:
        super().setUp()
        pki.init_ca(self.ca)
        self.dir = self.path("n")
        self.cert = pki.issue(self.ca, "n", self.dir)

    def test_interfaces(self) -> None:
        """
        It is a connection creator for both ends.
        """
        tls = NodeTLS(self.dir)
        verifyObject(IOpenSSLClientConnectionCreator, tls)
        verifyObject(IOpenSSLServerConnectionCreator, tls)
        self.assertIsNotNone(tls.clientConnectionForTLS(None))
        self.assertIsNotNone(tls.serverConnectionForTLS(None))

    def test_load(self) -> None:
        """
        The material names the node and holds the CA.
        """
        material = NodeTLS(self.dir).reload()
        self.assertEqual(material.node_id, "n")
        self.assertEqual(material.certificate, self.cert)
        self.assertEqual(len(material.authorities), 1)

    def test_constructor_reads_nothing(self) -> None:
        """
        Making a NodeTLS for a missing directory is fine until it is used.
        """
        tls = NodeTLS(self.path("missing"))
        e = self.assertRaises(TLSConfigError, tls.reload)
        self.assertIsInstance(e, ConfigError)
        self.assertIn("does not exist", str(e))

    def assertOneLine(self, error: Exception) -> None:
        self.assertTrue(str(error))
        self.assertNotIn("\n", str(error))
        self.assertNotIn("PRIVATE KEY", str(error))

    def test_missing_file(self) -> None:
        """
        Each missing file is named.
        """
        for name in ("ca.pem", "node.pem", "node.key"):
            directory = self.path("copy-" + name)
            shutil.copytree(self.dir, directory)
            os.remove(os.path.join(directory, name))
            e = self.assertRaises(TLSConfigError, NodeTLS(directory).reload)
            self.assertIn(name, str(e))
            self.assertOneLine(e)

    def test_garbage_files(self) -> None:
        """
        Files that are not PEM are refused with one line each.
        """
        for name in ("ca.pem", "node.pem", "node.key"):
            directory = self.path("garbage-" + name)
            shutil.copytree(self.dir, directory)
            with open(os.path.join(directory, name), "wb") as f:
                f.write(b"not pem\n")
            e = self.assertRaises(TLSConfigError, NodeTLS(directory).reload)
            self.assertIn(name, str(e))
            self.assertOneLine(e)

    def test_mismatched_key(self) -> None:
        """
        A key that is not the certificate's is refused.
        """
        other = self.path("other")
        pki.issue(self.ca, "n", other)
        shutil.copy(os.path.join(other, "node.key"), os.path.join(self.dir, "node.key"))
        e = self.assertRaises(TLSConfigError, NodeTLS(self.dir).reload)
        self.assertIn("do not match", str(e))
        self.assertOneLine(e)

    def test_foreign_ca(self) -> None:
        """
        A certificate not issued by a CA in ca.pem is refused.
        """
        other_ca = self.path("other-ca")
        pki.init_ca(other_ca)
        shutil.copy(os.path.join(other_ca, "ca.pem"), os.path.join(self.dir, "ca.pem"))
        e = self.assertRaises(TLSConfigError, NodeTLS(self.dir).reload)
        self.assertIn("not issued by", str(e))

    def test_ca_bundle(self) -> None:
        """
        ca.pem may hold several CAs (a CA rotation): the node certificate
        needs to come from one of them.
        """
        other_ca = self.path("other-ca")
        pki.init_ca(other_ca)
        with open(os.path.join(other_ca, "ca.pem"), "rb") as f:
            extra = f.read()
        with open(os.path.join(self.dir, "ca.pem"), "ab") as f:
            f.write(extra)
        self.assertEqual(len(NodeTLS(self.dir).reload().authorities), 2)

    def test_reload_on_change(self) -> None:
        """
        A re-issued certificate is picked up by the next connection.
        """
        tls = NodeTLS(self.dir)
        self.assertEqual(tls.current().certificate, self.cert)
        same = tls.current()
        self.assertIs(tls.current(), same)
        new = pki.issue(self.ca, "n", self.dir)
        self.assertEqual(tls.current().certificate, new)

    def test_broken_change_keeps_old(self) -> None:
        """
        A change that does not load (a key without its certificate, a
        deleted file) is ignored: the last good material stays in use, and
        is replaced once the directory is whole again.
        """
        tls = NodeTLS(self.dir)
        good = tls.current()
        other = self.path("other")
        pki.issue(self.ca, "n", other)
        shutil.copy(os.path.join(other, "node.key"), os.path.join(self.dir, "node.key"))
        self.assertIs(tls.current(), good)
        self.assertIs(tls.current(), good)
        shutil.copy(os.path.join(other, "node.pem"), os.path.join(self.dir, "node.pem"))
        self.assertNotEqual(tls.current().certificate, good.certificate)
        os.remove(os.path.join(self.dir, "node.pem"))
        self.assertEqual(tls.current().node_id, "n")
        self.flushLoggedErrors()
