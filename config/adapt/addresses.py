"""Site addresses and listener addresses: parsing, normalising and grouping them.

Owns what Caddy's httpcaddyfile/addresses.go does: a site key such as
`https://example.com:8443/path` becomes an `Address`; each address yields the
listener addresses (`:443`, `tcp6/[::]:443`, ...) it is served on; server blocks
are then grouped per listener set, and each group later becomes one server.

Go's `net.SplitHostPort` and Caddy's network-address helpers are reproduced here
because their exact edge cases decide the listener strings in the output JSON.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from config.adapt.helper import ConfigValue
from config.caddyfile.token import Token
from config.errors import ConfigError

DEFAULT_HTTP_PORT = 80
DEFAULT_HTTPS_PORT = 443

# Caddy truncates absurdly long keys before parsing them.
MAX_ADDRESS_LEN = 4096
# caddy.ParseNetworkAddress refuses port ranges wider than this.
MAX_PORT_SPAN = 65535

_GO_ATOI = re.compile(r"[+-]?[0-9]+\Z")


class AddressError(ValueError):
    """A malformed address; the text is Caddy's wording."""


@dataclass(frozen=True)
class Address:
    """A parsed site key (Caddy's `Address`)."""

    original: str = ""
    scheme: str = ""
    host: str = ""
    port: str = ""
    path: str = ""

    def __str__(self) -> str:
        """Caddy's `Address.String()`: canonical form, default ports left out."""
        if not self.host and not self.port:
            return ""
        scheme = self.scheme
        if not scheme:
            scheme = "https" if self.port == str(DEFAULT_HTTPS_PORT) else "http"
        text = scheme + "://"
        if self.port and (
            (scheme == "https" and self.port != str(DEFAULT_HTTPS_PORT))
            or (scheme == "http" and self.port != str(DEFAULT_HTTP_PORT))
        ):
            text += join_host_port(self.host, self.port)
        else:
            text += self.host
        return text + self.path

    def normalize(self) -> Address:
        """Lowercase scheme and host (outside placeholders); canonical IPv6 text."""
        host = self.host.strip()
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            # Go's netip.Addr.String() for a plain IPv6 address (not 4-in-6).
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
                host = str(ip)
        return Address(
            original=self.original,
            scheme=lower_except_placeholders(self.scheme),
            host=lower_except_placeholders(host),
            port=self.port,
            path=self.path,
        )


def go_atoi(text: str) -> int | None:
    """Go's strconv.Atoi for the inputs that matter here; None when it would fail."""
    if not _GO_ATOI.match(text):
        return None
    return int(text)


def split_host_port(hostport: str) -> tuple[str, str]:
    """Go's net.SplitHostPort; raises AddressError with Go's wording."""

    def fail(why: str) -> AddressError:
        return AddressError(f"address {hostport}: {why}")

    i = hostport.rfind(":")
    if i < 0:
        raise fail("missing port in address")
    j = k = 0
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise fail("missing ']' in address")
        if end + 1 == len(hostport):
            raise fail("missing port in address")
        if end + 1 != i:
            if hostport[end + 1] == ":":
                raise fail("too many colons in address")
            raise fail("missing port in address")
        host = hostport[1:end]
        j, k = 1, end + 1
    else:
        host = hostport[:i]
        if ":" in host:
            raise fail("too many colons in address")
    if "[" in hostport[j:]:
        raise fail("unexpected '[' in address")
    if "]" in hostport[k:]:
        raise fail("unexpected ']' in address")
    return host, hostport[i + 1 :]


def join_host_port(host: str, port: str) -> str:
    """Go's net.JoinHostPort: brackets around hosts containing a colon."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def lower_except_placeholders(text: str) -> str:
    """Lowercase everything except `{placeholders}` (backslash escapes respected)."""
    out: list[str] = []
    escaped = in_placeholder = False
    for ch in text:
        if ch == "\\" and not escaped:
            escaped = True
            out.append(ch)
            continue
        if ch == "{" and not escaped:
            in_placeholder = True
        if ch == "}" and in_placeholder and not escaped:
            in_placeholder = False
        out.append(ch if in_placeholder else ch.lower())
        escaped = False
    return "".join(out)


def parse_address(text: str) -> Address:
    """Parse a site key like Caddy's ParseAddress (no normalisation)."""
    remaining = text[:MAX_ADDRESS_LEN].strip()
    original = remaining
    scheme = ""
    if "://" in remaining:
        scheme, remaining = remaining.split("://", 1)
    host_part, slash, rest = remaining.partition("/")
    try:
        host, port = split_host_port(host_part)
    except AddressError:
        try:
            host, port = split_host_port(host_part + ":")
        except AddressError:
            host, port = host_part, ""
    path = "/" + rest if slash else ""
    if port:
        number = go_atoi(port)
        if number is None:
            raise AddressError(
                f"invalid port '{port}': strconv.Atoi: parsing {_go_quote(port)}: invalid syntax"
            )
        if number < 0 or number > 65535:
            raise AddressError(f"port {number} is out of range")
    return Address(original=original, scheme=scheme, host=host, port=port, path=path)


def _go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- network (listener) addresses: caddy.ParseNetworkAddress and friends ------------------------


def is_unix_network(network: str) -> bool:
    return network.startswith("unix")


def is_fd_network(network: str) -> bool:
    return network.startswith("fd")


def split_network_address(addr: str) -> tuple[str, str, str]:
    """`[network/]host[:port]` → (network, host, port), like caddy.SplitNetworkAddress."""
    network = ""
    before, slash, after = addr.partition("/")
    if slash:
        network = before.strip().lower()
        addr = after
        if is_unix_network(network) or is_fd_network(network):
            return network, addr, ""
    try:
        host, port = split_host_port(addr)
    except AddressError as first:
        # most likely "missing port": retry with a dummy port, as Caddy does
        try:
            host, _ = split_host_port(join_host_port(addr.strip("[]"), "0"))
        except AddressError as second:
            raise AddressError(f"{first}\n{second}") from None
        port = ""
    return network, host, port


def join_network_address(network: str, host: str, port: str) -> str:
    text = network + "/" if network else ""
    if (host and not port) or is_unix_network(network) or is_fd_network(network):
        return text + host
    if port:
        return text + join_host_port(host, port)
    return text


@dataclass(frozen=True)
class NetworkAddress:
    network: str
    host: str
    start_port: int = 0
    end_port: int = 0

    def port_text(self) -> str:
        if self.start_port == self.end_port:
            return str(self.start_port)
        return f"{self.start_port}-{self.end_port}"

    def __str__(self) -> str:
        network = self.network
        # the default network is left out for brevity
        if network == "tcp" and (self.host or self.port_text()):
            network = ""
        return join_network_address(network, self.host, self.port_text())


def parse_network_address(addr: str, default_network: str = "tcp") -> NetworkAddress:
    network, host, port = split_network_address(addr)
    network = network or default_network
    if is_unix_network(network) or is_fd_network(network):
        return NetworkAddress(network, host)
    start = end = 0
    if port:
        before, dash, after = port.partition("-")
        if not dash:
            after = before
        start = _parse_port(before, "start")
        end = _parse_port(after, "end")
        if end < start:
            raise AddressError("end port must not be less than start port")
        if end - start > MAX_PORT_SPAN:
            raise AddressError(f"port range exceeds {MAX_PORT_SPAN} ports")
    return NetworkAddress(network, host, start, end)


def _parse_port(text: str, which: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > 65535:
        raise AddressError(
            f"invalid {which} port: strconv.ParseUint: parsing {_go_quote(text)}: "
            + ("value out of range" if text.isascii() and text.isdigit() else "invalid syntax")
        )
    return int(text)


def listeners_use_any_port_other_than(addresses: list[str], other_port: str) -> bool:
    """Whether any listener address serves a port other than `other_port`."""
    port = go_atoi(other_port)
    if port is None:
        return False
    for text in addresses:
        try:
            na = parse_network_address(text)
        except AddressError:
            continue
        if port > na.end_port or port < na.start_port:
            return True
    return False


# -- server blocks per listener ------------------------------------------------------------------


@dataclass(frozen=True)
class BindValue:
    """What `bind` / `default_bind` contribute: addresses and the protocols to serve on them."""

    addresses: tuple[str, ...]
    protocols: tuple[str, ...] = ()


@dataclass
class SiteBlock:
    """One server block (or the part of one served on a given listener)."""

    keys: list[Token]
    segments: list[list[Token]]
    has_braces: bool = True
    pile: dict[str, list[ConfigValue]] = field(default_factory=dict)
    parsed_keys: list[Address] = field(default_factory=list)
    origin: int = 0  # index of the Caddyfile block it came from

    def identity(self) -> tuple[int, tuple[tuple[str, int], ...]]:
        """What Go's DeepEqual on two such blocks boils down to: same origin, same keys."""
        return self.origin, tuple((k.text, k.line) for k in self.keys)

    def hosts_from_keys(self, logger_mode: bool) -> list[str]:
        """Distinct hosts of the keys; none at all when a key is a catch-all (unless logging).

        In logger mode, a non-standard port is kept with the host.
        """
        hosts: dict[str, None] = {}
        for addr in self.parsed_keys:
            if not addr.host:
                if not logger_mode:
                    return []
                continue
            if (
                logger_mode
                and addr.port
                and addr.port not in (str(DEFAULT_HTTP_PORT), str(DEFAULT_HTTPS_PORT))
            ):
                hosts[join_host_port(addr.host, addr.port)] = None
            else:
                hosts[addr.host] = None
        return list(hosts)

    def hosts_from_keys_not_http(self, http_port: str) -> list[str]:
        hosts: dict[str, None] = {}
        for addr in self.parsed_keys:
            if addr.host and addr.scheme != "http" and addr.port != http_port:
                hosts[addr.host] = None
        return list(hosts)

    def has_host_catch_all_key(self) -> bool:
        return any(not addr.host for addr in self.parsed_keys)

    def is_all_http(self) -> bool:
        return all(addr.scheme == "http" for addr in self.parsed_keys)


@dataclass
class Pairing:
    """A set of listener addresses and the server blocks served on them: one server."""

    addresses: list[tuple[str, list[str]]]  # (listener address, sorted protocols)
    blocks: list[SiteBlock]


def _port_option(options: dict[str, Any], name: str, default: int) -> str:
    value = options.get(name)
    return str(value) if isinstance(value, int) else str(default)


def http_ports(options: dict[str, Any]) -> tuple[str, str]:
    return (
        _port_option(options, "http_port", DEFAULT_HTTP_PORT),
        _port_option(options, "https_port", DEFAULT_HTTPS_PORT),
    )


def listeners_for_address(
    block: SiteBlock, addr: Address, options: dict[str, Any]
) -> dict[str, set[str]]:
    """The listener addresses (and protocols) a site address is served on."""
    if addr.scheme == "wss":
        raise AddressError("the scheme wss:// is only supported in browsers; use https:// instead")
    if addr.scheme == "ws":
        raise AddressError("the scheme ws:// is only supported in browsers; use http:// instead")
    if addr.scheme not in ("https", "http", ""):
        raise AddressError(f"unsupported URL scheme {addr.scheme}://")

    http_port, https_port = http_ports(options)
    ln_port = https_port
    if addr.port:
        ln_port = addr.port
    elif addr.scheme == "http":
        ln_port = http_port
    if (addr.scheme == "http" and ln_port == https_port) or (
        addr.scheme == "https" and ln_port == http_port
    ):
        raise AddressError(f"[{addr}] scheme and port violate convention")

    binds = [v.value for v in block.pile.get("bind", []) if isinstance(v.value, BindValue)]
    if not binds:
        default_bind = options.get("default_bind")
        if isinstance(default_bind, list):
            binds = [v.value for v in default_bind]
        else:
            binds = [BindValue(("",))]

    listeners: dict[str, set[str]] = {}
    for bind in binds:
        for ln_addr in bind.addresses:
            try:
                network, host, _ = split_network_address(ln_addr)
            except AddressError as exc:
                raise AddressError(f"splitting listener address: {exc}") from None
            try:
                na = parse_network_address(join_network_address(network, host, ln_port))
            except AddressError as exc:
                raise AddressError(f"parsing network address: {exc}") from None
            key = str(na)
            # Caddy looks up the *site* address here, so a repeated listener
            # starts over with no protocols; kept for identical output.
            if str(addr) not in listeners:
                listeners[key] = set()
            listeners[key].update(bind.protocols)
    return listeners


def map_blocks_to_listeners(
    blocks: list[SiteBlock], options: dict[str, Any]
) -> dict[str, dict[str, list[SiteBlock]]]:
    """listener address → protocol ("" = default) → the blocks (restricted to the keys
    served there)."""
    result: dict[str, dict[str, list[SiteBlock]]] = {}
    for i, block in enumerate(blocks):
        per_addr: dict[str, dict[str, list[tuple[Token, Address]]]] = {}
        for j, key in enumerate(block.keys):
            try:
                parsed = parse_address(key.text).normalize()
            except AddressError as exc:
                raise ConfigError(f"parsing key: {exc}", key.file, key.line) from None
            try:
                listeners = listeners_for_address(block, parsed, options)
            except AddressError as exc:
                raise ConfigError(
                    f"server block {i}, key {j} ({key.text}): determining listener address: {exc}",
                    key.file,
                    key.line,
                ) from None
            for ln_addr, protocols in listeners.items():
                per_prot = per_addr.setdefault(ln_addr, {})
                for prot in protocols or {""}:
                    per_prot.setdefault(prot, []).append((key, parsed))
        for ln_addr in sorted(per_addr):
            per_prot = per_addr[ln_addr]
            target = result.setdefault(ln_addr, {})
            for prot in sorted(per_prot):
                pairs = per_prot[prot]
                target.setdefault(prot, []).append(
                    SiteBlock(
                        keys=[k for k, _ in pairs],
                        segments=block.segments,
                        has_braces=block.has_braces,
                        pile=block.pile,
                        parsed_keys=[a for _, a in pairs],
                        origin=block.origin,
                    )
                )
    return result


def consolidate_listeners(mapping: dict[str, dict[str, list[SiteBlock]]]) -> list[Pairing]:
    """Merge listeners that serve exactly the same blocks into one pairing (one server)."""

    def identity(blocks: list[SiteBlock]) -> list[Any]:
        return [b.identity() for b in blocks]

    pairings: list[Pairing] = []
    for addr in sorted(mapping):
        per_prot = mapping[addr]
        for prot in sorted(per_prot):
            if prot not in per_prot:
                continue  # merged into an earlier pairing
            blocks = per_prot[prot]
            wanted = identity(blocks)
            listeners: dict[str, set[str]] = {}
            for other_addr, other_per_prot in mapping.items():
                for other_prot in list(other_per_prot):
                    other_blocks = other_per_prot[other_prot]
                    same = addr == other_addr and prot == other_prot
                    if same or identity(other_blocks) == wanted:
                        listeners.setdefault(other_addr, set()).add(other_prot)
                        del other_per_prot[other_prot]
            pairings.append(
                Pairing(
                    addresses=[(a, sorted(listeners[a])) for a in sorted(listeners)],
                    blocks=blocks,
                )
            )
    return pairings


def specificity(text: str) -> int:
    """Length minus wildcards and `{placeholders}`: a rough measure of how specific a
    host or path is, used to order sites."""
    length = len(text) - text.count("*")
    while text:
        start = text.find("{")
        if start < 0:
            return length
        end = text.find("}", start) + 1
        if end <= start:
            return length
        length -= end - start
        text = text[end:]
    return length
