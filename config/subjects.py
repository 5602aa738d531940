"""certmagic's rules about certificate subjects (names and IPs), shared by the adapter's TLS
automation policies and the automatic-HTTPS planner."""

from __future__ import annotations

import ipaddress

# certmagic's isInternalIP ranges: these never get publicly trusted certificates.
_INTERNAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "0.0.0.0/16",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "::/7",  # certmagic writes "::1/7", which Go masks to ::/7
        "fe80::/10",
        "fc00::/7",
    )
)
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa")
_BAD_NAME_CHARS = frozenset("()[]{}<> \t\n\"\\!@#$%^&|;'+=")


def host_only(name: str) -> str:
    """`name` without a port (and without the brackets of an IPv6 literal)."""
    if name.startswith("[") and "]" in name:
        return name[1 : name.index("]")]
    if name.count(":") == 1:
        return name.partition(":")[0]
    return name


def subject_is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_internal_ip(name: str) -> bool:
    try:
        ip = ipaddress.ip_address(host_only(name))
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in _INTERNAL_NETWORKS)


def subject_is_internal(name: str) -> bool:
    """localhost, `*.localhost`, `*.local`, `*.internal`, `*.home.arpa` or a private IP."""
    host = host_only(name).rstrip(".").lower()
    return host == "localhost" or host.endswith(_INTERNAL_SUFFIXES) or _is_internal_ip(host)


def subject_qualifies_for_cert(name: str) -> bool:
    """A quick sanity check that `name` could be a certificate subject (certmagic's rule)."""
    return (
        name.strip() != ""
        and not name.startswith(".")
        and not name.endswith(".")
        # a wildcard only as the whole left-most label (or bare "*")
        and ("*" not in name or name.startswith("*.") or name == "*")
        and not any(c in _BAD_NAME_CHARS for c in name)
    )


def subject_qualifies_for_public_cert(name: str) -> bool:
    """Could a public CA issue for `name`? Not for internal names or odd wildcards."""
    return (
        subject_qualifies_for_cert(name)
        and not subject_is_internal(name)
        and (
            "*" not in name
            or (name.count("*") == 1 and name.count(".") > 1 and name.startswith("*."))
        )
    )


def match_wildcard(subject: str, wildcard: str) -> bool:
    """certmagic.MatchWildcard: equal, or equal after replacing leading labels with `*`."""
    subject, wildcard = host_only(subject).lower(), wildcard.lower()
    if subject == wildcard:
        return True
    if "*" not in wildcard:
        return False
    labels = subject.split(".")
    for i, label in enumerate(labels):
        if not label:
            continue
        labels[i] = "*"
        if ".".join(labels) == wildcard:
            return True
    return False
