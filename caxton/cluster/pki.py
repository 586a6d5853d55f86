# -*- test-case-name: tests.test_pki -*-
"""
The cluster's PKI: a cluster CA, node certificates that name their node,
and the TLS settings node streams use (SPEC 5.3).

A cluster has one CA (L{init_ca}: C{ca.pem} and C{ca.key}).  Each node has
a TLS directory made by L{issue}: C{ca.pem} (the CA certificates it
trusts), C{node.pem} (its certificate) and C{node.key} (its key, mode
0600).  L{NodeTLS} reads that directory and gives Twisted the connection
creators for both ends of a mutually authenticated stream.

How a certificate names its node
================================

The node id travels in a I{URI} subjectAltName, C{caxton://node/<node_id>}
(L{node_uri}), and is read back with L{node_id_of}, which compares the
exact string.  A DNS name would not do: node ids may hold C{_} and capital
letters (C{^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$}), which DNS-ID matching
(C{service_identity}, RFC 6125) either refuses or folds to lower case, and
an id such as C{web.example} would be mistaken for a real host name that a
public CA could vouch for.  A URI in a scheme of our own cannot collide
with host names, keeps the id byte for byte, and a certificate from this
CA that lacks it names no node and is refused.  Extra host names and
addresses (C{hosts}) go in DNS and IP SANs for tools that check them.

Keys are ECDSA P-256: every TLS stack speaks it, and pyOpenSSL handles it
without surprises (Ed25519 certificates are still refused by some peers
and by TLS 1.2 in older OpenSSL builds).

Reloading
=========

L{NodeTLS} looks at the three files (size, mtime, inode) each time a
connection is made, in either direction, and reloads them when any
changed, so re-issued certificates and an extended C{ca.pem} take effect
without a restart, for new connections; streams already open keep the
session they negotiated.  Files written by L{issue} are replaced
atomically (write, then rename), and a set that does not load (say, a new
key next to the old certificate while an operator copies files) is
logged and ignored: the last good set stays in use until the directory is
whole again.

Rotating the CA: append the new CA certificate to every node's C{ca.pem}
(a node trusts every certificate in it), re-issue the node certificates
from the new CA, then drop the old CA from C{ca.pem}.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import tempfile
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import attr
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from zope.interface import implementer

from caxton.config import ConfigError

log = Logger()

#: What a node id looks like (the same rule as the C{node_id} config key).
NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

#: The URI subjectAltName prefix that carries a node id.
NODE_URI_PREFIX = "caxton://node/"

#: File names in a CA directory and a node TLS directory.
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
NODE_CERT = "node.pem"
NODE_KEY = "node.key"

#: Default lifetimes, in days.
DEFAULT_CA_DAYS = 3650
DEFAULT_NODE_DAYS = 825

# A certificate is valid from a little before it was made, so a peer whose
# clock runs slightly behind does not refuse a fresh one.
_BACKDATE = datetime.timedelta(minutes=5)


class PKIError(Exception):
    """
    A CA or certificate cannot be made as asked; C{str()} is the one line
    to show (the CLI prints it and exits 1).
    """


class TLSConfigError(ConfigError):
    """
    A node's TLS directory is missing, unreadable or inconsistent;
    C{str()} is the one line to show at start-up.
    """


def node_uri(node_id: str) -> str:
    """
    The URI subjectAltName that names C{node_id} in its certificate.
    """
    return NODE_URI_PREFIX + node_id


def node_id_of(cert: Union[x509.Certificate, crypto.X509, None]) -> Optional[str]:
    """
    The node id a certificate was issued for, or C{None}.

    Only a URI SAN C{caxton://node/<id>} with a valid id counts, and a
    certificate naming two different nodes names none.

    @param cert: a C{cryptography} certificate or a pyOpenSSL C{X509}.
    """
    if cert is None:
        return None
    if isinstance(cert, crypto.X509):
        cert = cert.to_cryptography()
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    except ValueError:
        # A malformed extension: it names nobody.
        return None
    ids = {
        uri[len(NODE_URI_PREFIX) :]
        for uri in sans.value.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(NODE_URI_PREFIX)
    }
    if len(ids) != 1:
        return None
    (node_id,) = ids
    return node_id if NODE_ID.match(node_id) else None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write_atomically(path: str, data: bytes, mode: int) -> None:
    """
    Write C{data} to C{path} through a temporary file in the same directory
    and a rename, so a reader never sees half a file, and a key is never
    readable by others even for a moment.
    """
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_days(days: int) -> None:
    if not isinstance(days, int) or days < 1:
        raise PKIError(f"days must be a whole number of at least 1, not {days!r}")


def init_ca(
    directory: str,
    cluster_name: str = "caxton",
    days: int = DEFAULT_CA_DAYS,
    force: bool = False,
) -> x509.Certificate:
    """
    Make a new cluster CA in C{directory}: C{ca.pem} and C{ca.key} (mode
    0600).  The directory is created if needed.

    @param cluster_name: written in the CA's subject, for people reading it.
    @param days: how long the CA is valid.
    @param force: replace an existing CA (every node certificate it issued
        stops being trusted by nodes that take the new C{ca.pem}).
    @raise PKIError: a CA is already there and C{force} is false, or the
        directory cannot be written.
    @return: the CA certificate.
    """
    _check_days(days)
    cert_path = os.path.join(directory, CA_CERT)
    key_path = os.path.join(directory, CA_KEY)
    if not force and (os.path.exists(cert_path) or os.path.exists(key_path)):
        raise PKIError(f"a CA already exists in {directory} (use --force to replace it)")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Caxton"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster_name} cluster CA"[:64]),
        ]
    )
    now = _now()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    try:
        os.makedirs(directory, exist_ok=True)
        # The key first: a ca.pem without its key is a broken CA, a lone
        # key is merely an unfinished one that --force replaces.
        _write_atomically(key_path, _key_pem(key), 0o600)
        _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as e:
        raise PKIError(f"cannot write the CA to {directory}: {e.strerror or e}") from None
    return cert


def load_ca(ca_dir: str) -> Tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """
    Read the CA certificate and key made by L{init_ca}.

    @raise PKIError: there is no CA in C{ca_dir}, or it is unreadable or
        inconsistent.
    """
    cert_path = os.path.join(ca_dir, CA_CERT)
    key_path = os.path.join(ca_dir, CA_KEY)
    if not (os.path.exists(cert_path) and os.path.exists(key_path)):
        raise PKIError(f"no CA in {ca_dir} (run caxton certs init-ca first)")
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        raise PKIError(f"cannot read the CA in {ca_dir}: {e.strerror or e}") from None
    except (ValueError, TypeError) as e:
        raise PKIError(f"the CA in {ca_dir} is not a PEM certificate and key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{key_path} is not an ECDSA key made by caxton certs init-ca")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise PKIError(f"{CA_KEY} and {CA_CERT} in {ca_dir} do not belong together")
    return cert, key


def _host_names(hosts: Iterable[str]) -> List[x509.GeneralName]:
    names: List[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            try:
                names.append(x509.DNSName(host.encode("idna").decode("ascii")))
            except UnicodeError:
                raise PKIError(f"{host!r} is neither an IP address nor a host name") from None
    return names


def issue(
    ca_dir: str,
    node_id: str,
    out_dir: str,
    days: int = DEFAULT_NODE_DAYS,
    hosts: Sequence[str] = (),
) -> x509.Certificate:
    """
    Issue a certificate for C{node_id} from the CA in C{ca_dir} and write a
    node TLS directory in C{out_dir}: C{ca.pem} (a copy of the CA
    certificate), C{node.pem} and C{node.key} (mode 0600).  Existing node
    files are replaced, which is how a certificate is renewed.

    The certificate names the node in a URI SAN (L{node_uri}), carries
    C{hosts} as DNS or IP SANs, may be used as a TLS server and client
    (extendedKeyUsage), and ends no later than the CA does.

    @param days: how long the certificate is valid.
    @raise PKIError: C{node_id} is not a valid node id, there is no CA, or
        C{out_dir} cannot be written.
    @return: the node certificate.
    """
    if not isinstance(node_id, str) or not NODE_ID.match(node_id):
        raise PKIError(
            f"{node_id!r} is not a valid node id "
            "(letters, digits, '.', '_', '-', starting with a letter or digit, at most 63)"
        )
    _check_days(days)
    ca_cert, ca_key = load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    if not_after <= now:
        raise PKIError(f"the CA in {ca_dir} has expired")
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    sans: List[x509.GeneralName] = [x509.UniformResourceIdentifier(node_uri(node_id))]
    sans.extend(_host_names(hosts))
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Caxton"),
                    x509.NameAttribute(NameOID.COMMON_NAME, node_id),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        # Critical would make some stacks refuse a URI they do not know;
        # the name is checked by Caxton itself (node_id_of).
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    try:
        os.makedirs(out_dir, exist_ok=True)
        # The CA first and the certificate last: a node reloading midway
        # sees a new key with the old certificate, refuses the set and
        # keeps the old one until node.pem arrives (see NodeTLS).
        shutil.copyfile(os.path.join(ca_dir, CA_CERT), os.path.join(out_dir, ".tmp-ca.pem"))
        os.replace(os.path.join(out_dir, ".tmp-ca.pem"), os.path.join(out_dir, CA_CERT))
        _write_atomically(os.path.join(out_dir, NODE_KEY), _key_pem(key), 0o600)
        _write_atomically(
            os.path.join(out_dir, NODE_CERT),
            cert.public_bytes(serialization.Encoding.PEM),
            0o644,
        )
    except OSError as e:
        raise PKIError(f"cannot write to {out_dir}: {e.strerror or e}") from None
    return cert


@attr.s(frozen=True, slots=True, auto_attribs=True)
class TLSMaterial:
    """
    One consistent, loaded node TLS directory.

    @ivar node_id: the node the certificate names.
    @ivar certificate: the node's certificate.
    @ivar authorities: the CA certificates peers must chain to.
    @ivar options: the Twisted TLS options built from them.
    @ivar signature: the files' (size, mtime, inode) when they were read.
    """

    node_id: str
    certificate: x509.Certificate
    authorities: Tuple[x509.Certificate, ...]
    options: CertificateOptions
    signature: Tuple[Tuple[int, int, int], ...]


def _issued_by(cert: x509.Certificate, authorities: Sequence[x509.Certificate]) -> bool:
    for ca in authorities:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


@implementer(IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator)
class NodeTLS:
    """
    A node's TLS directory (C{ca.pem}, C{node.pem}, C{node.key}) as the
    connection creator for both ends of a node stream.

    Give it to C{TLSMemoryBIOFactory} (server side) or C{wrapClientTLS}
    (client side).  Either way the peer must present a certificate that
    chains to a CA in C{ca.pem}: the server requires a client certificate.
    TLS 1.2 is the minimum, 1.3 is used whenever both ends have it.  The
    peer's I{identity} (the node id in its certificate) is not checked
    here but by the stream's HELLO (L{caxton.cluster.stream}), which knows
    which node it expects.

    The constructor reads nothing; L{reload} (or the first connection)
    does, and then every new connection checks whether the files changed
    (see the module docstring).

    @ivar directory: the TLS directory.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._material: Optional[TLSMaterial] = None
        self._refused_signature: Optional[Tuple[Tuple[int, int, int], ...]] = None

    def _paths(self) -> Tuple[str, str, str]:
        return (
            os.path.join(self.directory, CA_CERT),
            os.path.join(self.directory, NODE_CERT),
            os.path.join(self.directory, NODE_KEY),
        )

    def _signature(self) -> Tuple[Tuple[int, int, int], ...]:
        if not os.path.isdir(self.directory):
            raise TLSConfigError(
                f"tls_dir {self.directory} does not exist "
                "(make it with caxton certs issue NODE_ID --out DIR)"
            )
        signature = []
        for path in self._paths():
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise TLSConfigError(
                    f"tls_dir {self.directory} has no {os.path.basename(path)} "
                    "(make it with caxton certs issue NODE_ID --out DIR)"
                ) from None
            except OSError as e:
                raise TLSConfigError(f"cannot read {path}: {e.strerror or e}") from None
            signature.append((st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(signature)

    def _load(self, signature: Tuple[Tuple[int, int, int], ...]) -> TLSMaterial:
        ca_path, cert_path, key_path = self._paths()
        try:
            with open(ca_path, "rb") as f:
                authorities = tuple(x509.load_pem_x509_certificates(f.read()))
        except OSError as e:
            raise TLSConfigError(f"cannot read {ca_path}: {e.strerror or e}") from None
        except ValueError:
            raise TLSConfigError(f"{ca_path} holds no PEM certificate") from None
        try:
            with open(cert_path, "rb") as f:
                cert = x509.load_pem_x509_certificate(f.read())
        except OSError as e:
            raise TLSConfigError(f"cannot read {cert_path}: {e.strerror or e}") from None
        except ValueError:
            raise TLSConfigError(f"{cert_path} is not a PEM certificate") from None
        try:
            with open(key_path, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), password=None)
        except OSError as e:
            raise TLSConfigError(f"cannot read {key_path}: {e.strerror or e}") from None
        except (ValueError, TypeError):
            # Never echo the parser's message: it may quote the key.
            raise TLSConfigError(
                f"{key_path} is not an unencrypted PEM private key"
            ) from None
        node_id = node_id_of(cert)
        if node_id is None:
            raise TLSConfigError(
                f"{cert_path} names no node (it needs a {NODE_URI_PREFIX}<id> subjectAltName)"
            )
        if key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise TLSConfigError(f"{NODE_KEY} and {NODE_CERT} in {self.directory} do not match")
        if not _issued_by(cert, authorities):
            raise TLSConfigError(
                f"{NODE_CERT} in {self.directory} was not issued by a CA in {CA_CERT}"
            )
        if cert.not_valid_after_utc <= _now():
            raise TLSConfigError(
                f"{cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d} "
                "(re-issue it with caxton certs issue)"
            )
        try:
            options = CertificateOptions(
                privateKey=crypto.PKey.from_cryptography_key(key),
                certificate=crypto.X509.from_cryptography(cert),
                trustRoot=trustRootFromCertificates(
                    [Certificate(crypto.X509.from_cryptography(ca)) for ca in authorities]
                ),
                raiseMinimumTo=TLSVersion.TLSv1_2,
            )
            # Build the context now, so OpenSSL's own complaints surface
            # here and not in the middle of a connection.
            options.getContext()
        except (SSL.Error, crypto.Error, ValueError, TypeError) as e:
            raise TLSConfigError(f"tls_dir {self.directory} is not usable: {e}") from None
        return TLSMaterial(
            node_id=node_id,
            certificate=cert,
            authorities=authorities,
            options=options,
            signature=signature,
        )

    def reload(self) -> TLSMaterial:
        """
        Read the directory now, whether or not it changed.

        @raise TLSConfigError: it is missing, unreadable or inconsistent;
            the previous material (if any) stays in use.
        @return: the loaded material.
        """
        material = self._load(self._signature())
        self._material = material
        self._refused_signature = None
        return material

    def current(self) -> TLSMaterial:
        """
        The material to use for a new connection: reloaded if the files
        changed and the new set loads, else the last good one.

        @raise TLSConfigError: nothing has ever loaded and the directory
            does not load now.
        """
        material = self._material
        if material is None:
            return self.reload()
        try:
            signature = self._signature()
        except TLSConfigError as e:
            if self._refused_signature != ():
                log.warn("keeping the loaded TLS material: {error}", error=str(e))
                self._refused_signature = ()
            return material
        if signature == material.signature or signature == self._refused_signature:
            return material
        try:
            material = self._load(signature)
        except TLSConfigError as e:
            # Files mid-copy, or a broken renewal: keep serving with what
            # worked, say so once per state of the files.
            log.warn("keeping the loaded TLS material: {error}", error=str(e))
            self._refused_signature = signature
            return self._material  # type: ignore[return-value]
        old = self._material
        self._material = material
        self._refused_signature = None
        log.info(
            "reloaded TLS material from {directory} (node {node_id}, serial {serial:x})",
            directory=self.directory,
            node_id=material.node_id,
            serial=material.certificate.serial_number,
        )
        if old is not None and old.node_id != material.node_id:
            log.warn(
                "the certificate in {directory} now names node {node_id}, not {old}",
                directory=self.directory,
                node_id=material.node_id,
                old=old.node_id,
            )
        return material

    @property
    def node_id(self) -> str:
        """
        The node id the current certificate names (loading it if needed).
        """
        return self.current().node_id

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """
        An OpenSSL connection for the dialing end, with the current
        material.
        """
        return SSL.Connection(self.current().options.getContext(), None)

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """
        An OpenSSL connection for the accepting end, with the current
        material; it requires a client certificate.
        """
        return SSL.Connection(self.current().options.getContext(), None)
