"""Certificates, keys and kubeconfigs of a local control plane.

One CA signs everything: the kube-apiserver serving certificate and the client
certificates of the admin and of each component, whose identity the API server
reads from the subject (CN = user, O = groups), as kubeadm does. Keys are ECDSA
P-256: generating them takes milliseconds (RSA-2048 takes ~0.1 s each on a slow
core), and every Kubernetes component accepts them, service-account signing
(ES256) included.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The first address of the service range is the `kubernetes` Service's ClusterIP; in-cluster
# clients dial it, so the serving certificate must name it (see cluster.SERVICE_CIDR).
APISERVER_SANS_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)

_VALIDITY = dt.timedelta(days=365)
# Backdated so that a certificate is valid at once even if clocks disagree by a little.
_BACKDATE = dt.timedelta(hours=1)


@dataclass(frozen=True)
class CertKey:
    """Paths of a PEM certificate and its PEM private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterPKI:
    """Everything a control plane needs to authenticate its parts to each other.

    The front-proxy CA and client are what kubeadm sets up for the aggregation
    layer: the API server proxies to aggregated API servers (metrics adapters)
    with that client certificate, and components with delegated authentication
    (the controller manager, the scheduler) trust the CA for request headers.
    """

    ca: CertKey
    apiserver: CertKey
    service_account_key: Path
    service_account_pub: Path
    admin: CertKey
    controller_manager: CertKey
    scheduler: CertKey
    front_proxy_ca: CertKey
    front_proxy_client: CertKey


FRONT_PROXY_CLIENT = "front-proxy-client"


def create_pki(directory: Path, service_ip: str) -> ClusterPKI:
    """Write fresh CAs, serving and client certificates and the service-account key pair.

    `service_ip` is the ClusterIP of the `kubernetes` Service, added to the serving
    certificate's SANs next to 127.0.0.1 and the `kubernetes.default...` names.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca = _CertificateAuthority.create(directory, "ca", "kubeforge-e2e-ca", now)
    front_proxy_ca = _CertificateAuthority.create(
        directory, "front-proxy-ca", "kubeforge-e2e-front-proxy-ca", now
    )

    apiserver_sans: list[x509.GeneralName] = [x509.DNSName(n) for n in APISERVER_SANS_DNS]
    apiserver_sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", service_ip)]
    server, client = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH

    sa_key = _new_key()
    sa_key_path = directory / "sa.key"
    sa_pub_path = directory / "sa.pub"
    _write_private(sa_key_path, sa_key)
    sa_pub_path.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return ClusterPKI(
        ca=ca.paths,
        apiserver=ca.issue("apiserver", _name("kube-apiserver"), [server], apiserver_sans, now),
        service_account_key=sa_key_path,
        service_account_pub=sa_pub_path,
        # system:masters is bound to cluster-admin by the bootstrap RBAC policy.
        admin=ca.issue("admin", _name("kubeforge-admin", "system:masters"), [client], [], now),
        # The bootstrap policy binds these user names to the components' ClusterRoles.
        controller_manager=ca.issue(
            "controller-manager", _name("system:kube-controller-manager"), [client], [], now
        ),
        scheduler=ca.issue("scheduler", _name("system:kube-scheduler"), [client], [], now),
        front_proxy_ca=front_proxy_ca.paths,
        front_proxy_client=front_proxy_ca.issue(
            FRONT_PROXY_CLIENT, _name(FRONT_PROXY_CLIENT), [client], [], now
        ),
    )


def issue_serving_certificate(
    ca: CertKey,
    directory: Path,
    file_name: str,
    ip_addresses: Sequence[str],
    *,
    dns_names: Sequence[str] = (),
    client_auth: bool = False,
) -> CertKey:
    """Issue a serving certificate for `ip_addresses` and `dns_names` from an existing CA (`ca` with its key).

    For a server that stands in for the API server (the fault-injecting proxy of
    e2e/faultproxy.py): signed by the cluster's CA, it is trusted by every client
    of the cluster, so a kubeconfig needs only a new server URL to go through it.
    For an aggregated API server (e2e/monitoring.py): the API server checks its
    certificate against the APIService's caBundle for the name `<service>.<namespace>.svc`,
    whatever address it dials, so that name goes into `dns_names`. `client_auth` adds
    the client usage, for a certificate that is also shown to a peer (KEDA's operator
    and metrics server authenticate each other over mutual TLS with one certificate).
    """
    directory.mkdir(parents=True, exist_ok=True)
    authority = _CertificateAuthority.load(directory, ca)
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    sans += [x509.DNSName(name) for name in dns_names]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    if client_auth:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    now = dt.datetime.now(dt.UTC)
    return authority.issue(file_name, _name(file_name), usages, sans, now)


@dataclass(frozen=True)
class _CertificateAuthority:
    directory: Path
    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    paths: CertKey

    @classmethod
    def create(
        cls, directory: Path, file_name: str, common_name: str, now: dt.datetime
    ) -> _CertificateAuthority:
        key = _new_key()
        name = _name(common_name)
        cert = (
            _builder(name, name, key.public_key(), now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(directory, name, key, _write(directory, file_name, cert, key))

    @classmethod
    def load(cls, directory: Path, paths: CertKey) -> _CertificateAuthority:
        """An existing CA read from its files; what it issues is written to `directory`."""
        cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
        key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{paths.key} is not an ECDSA key (create_pki writes only those)")
        return cls(directory, cert.subject, key, paths)

    def issue(
        self,
        file_name: str,
        subject: x509.Name,
        usages: Sequence[x509.ObjectIdentifier],
        sans: list[x509.GeneralName],
        now: dt.datetime,
    ) -> CertKey:
        key = _new_key()
        builder = (
            _builder(subject, self.name, key.public_key(), now)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return _write(self.directory, file_name, builder.sign(self.key, hashes.SHA256()), key)


def write_kubeconfig(path: Path, server: str, ca_cert: Path, client: CertKey, name: str) -> None:
    """Write a self-contained kubeconfig (certificates inlined) for one client identity."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)}}
        ],
        "users": [
            {
                "name": name,
                "user": {
                    "client-certificate-data": _b64(client.cert),
                    "client-key-data": _b64(client.key),
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def write_token_kubeconfig(path: Path, server: str, ca_cert: Path, token: str, name: str) -> None:
    """Write a kubeconfig that authenticates with a bearer token (a ServiceAccount's, from TokenRequest).

    For the components that run out of cluster as a ServiceAccount would in a pod, so that the
    RBAC their charts grant is the RBAC they are tested with (e2e/monitoring.py).
    """
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)}}
        ],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: dt.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> CertKey:
    pair = CertKey(cert=directory / f"{name}.crt", key=directory / f"{name}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(pair.key, key)
    return pair


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()
