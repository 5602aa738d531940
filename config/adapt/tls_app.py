"""The `tls` app: issuers, automation policies and certificate loaders (tlsapp.go).

Also the Caddyfile forms of the issuer modules (`issuer acme { ... }`, `zerossl`, `internal`) and of
`preferred_chains`, which both the `tls` directive and global options use, and the
consolidation of TLS connection policies of one server.

Issuers are plain JSON dicts that always carry their `"module"` key. An automation
policy is mutable while it is built (several site blocks may share the catch-all one,
exactly as Caddy shares a pointer) and is turned into JSON at the very end.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from config.adapt.addresses import (
    Pairing,
    http_ports,
    listeners_use_any_port_other_than,
)
from config.adapt.directive_order import go_stable_sort
from config.adapt.helper import JSONDict
from config.caddyfile.dispenser import Dispenser
from config.errors import ConfigError
from config.go_values import DurationError, parse_duration
from config.subjects import (
    match_wildcard,
    subject_is_internal,
    subject_is_ip,
    subject_qualifies_for_cert,
)
from config.subjects import (
    subject_qualifies_for_public_cert as certmagic_subject_qualifies_for_public_cert,
)

ZEROSSL_PRODUCTION_CA = "https://acme.zerossl.com/v2/DV90"
INTERNAL_ISSUER: JSONDict = {"module": "internal"}

# -- issuer modules in Caddyfile form -----------------------------------------------------------


def parse_preferred_chains(d: Dispenser) -> JSONDict:
    """`preferred_chains [smallest] { root_common_name ... | any_common_name ... }`."""
    pref: JSONDict = {}
    if d.next_arg():
        if d.val() != "smallest":
            raise d.err(f"Invalid argument '{d.val()}'")
        pref["smallest"] = True
        if d.next_arg():
            raise d.arg_err()
        if d.next_block(d.nesting):
            raise d.err("No more options are accepted when using the 'smallest' option")
    nesting = d.nesting
    while d.next_block(nesting):
        key = d.val()
        if key not in ("root_common_name", "any_common_name"):
            raise d.err(f"Received unrecognized parameter '{key}'")
        names = d.remaining_args()
        pref.setdefault(key, []).extend(names)
        if not names:
            raise d.arg_err()
        other = "any_common_name" if key == "root_common_name" else "root_common_name"
        if other in pref:
            raise d.err(f"Can't set {key} when {other} is already set")
    if not pref:
        raise d.err("No options for preferred_chains received")
    return pref


def _challenges(iss: JSONDict, kind: str | None = None) -> JSONDict:
    challenges: JSONDict = iss.setdefault("challenges", {})
    if kind is None:
        return challenges
    sub: JSONDict = challenges.setdefault(kind, {})
    return sub


def _all_args_1(d: Dispenser) -> str:
    args = d.all_args(1)
    if args is None:
        raise d.arg_err()
    return args[0]


def parse_acme_issuer(d: Dispenser) -> JSONDict:
    """The `acme` issuer's Caddyfile syntax; `d` is a dispenser over its segment."""
    d.next()
    iss: JSONDict = {"module": "acme"}
    if d.next_arg():
        iss["ca"] = d.val()
        if d.next_arg():
            raise d.arg_err()
    while d.next_block(0):
        key = d.val()
        if key == "lifetime":
            text = _all_args_1(d)
            try:
                lifetime = parse_duration(text)
            except DurationError as exc:
                raise d.err(f"invalid lifetime {text}: {exc}") from None
            if lifetime < 0:
                raise d.err(f"lifetime must be >= 0: {text}")
            iss["certificate_lifetime"] = lifetime
        elif key == "dir":
            if iss.get("ca"):
                raise d.err(f"directory is already specified: {iss['ca']}")
            iss["ca"] = _all_args_1(d)
        elif key in ("test_dir", "email", "profile"):
            iss["test_ca" if key == "test_dir" else key] = _all_args_1(d)
        elif key == "timeout":
            text = _all_args_1(d)
            try:
                iss["acme_timeout"] = parse_duration(text)
            except DurationError as exc:
                raise d.err(f"invalid timeout duration {text}: {exc}") from None
        elif key in ("disable_http_challenge", "disable_tlsalpn_challenge"):
            if d.next_arg():
                raise d.arg_err()
            _challenges(iss, "http" if key == "disable_http_challenge" else "tls-alpn")[
                "disabled"
            ] = True
        elif key == "distributed":
            if not d.next_arg():
                raise d.arg_err()
            if d.val() != "false":
                raise d.err("only accepted value is 'false'")
            _challenges(iss)["distributed"] = False
        elif key in ("alt_http_port", "alt_tlsalpn_port"):
            if not d.next_arg():
                raise d.arg_err()
            try:
                port = int(d.val(), 10)
            except ValueError:
                raise d.err(f"invalid port {d.val()}: invalid syntax") from None
            _challenges(iss, "http" if key == "alt_http_port" else "tls-alpn")["alternate_port"] = (
                port
            )
        elif key == "eab":
            args = d.all_args(2)
            if args is None:
                raise d.arg_err()
            iss["external_account"] = {"key_id": args[0], "mac_key": args[1]}
        elif key == "trusted_roots":
            roots = d.remaining_args()
            if roots:
                iss["trusted_roots_pem_files"] = roots
            else:
                iss.pop("trusted_roots_pem_files", None)
        elif key == "preferred_chains":
            iss["preferred_chains"] = parse_preferred_chains(d)
        elif key in (
            "dns",
            "propagation_delay",
            "propagation_timeout",
            "resolvers",
            "dns_ttl",
            "dns_challenge_override_domain",
        ):
            raise d.err(f"ACME issuer property '{key}' (DNS challenge) is not supported by pyproxy")
        else:
            raise d.err(f"unrecognized ACME issuer property: {key}")
    return iss


def _int_arg(d: Dispenser, what: str) -> int:
    text = _all_args_1(d)
    try:
        return int(text, 10)
    except ValueError:
        raise d.err(f"invalid {what} {text}: invalid syntax") from None


def parse_zerossl_issuer(d: Dispenser) -> JSONDict:
    """Current Caddy's `zerossl <api_key> { ... }` (ZeroSSLIssuer.UnmarshalCaddyfile): ZeroSSL's
    own API, not ACME. 2.6.2's `zerossl` was an ACME issuer (its block took the `acme` issuer's
    properties); that form is the `acme` issuer with ZeroSSL's CA now.

    Deviation: current Caddy reads `validity_days` without taking its argument (so it always
    fails with "invalid number of days validity_days"); pyproxy reads the number given.
    `dns` and the other CNAME-validation properties are refused: pyproxy has no DNS providers.
    """
    d.next()
    if not d.next_arg():
        raise d.arg_err()
    iss: JSONDict = {"module": "zerossl", "api_key": d.val()}
    if d.next_arg():
        raise d.arg_err()
    while d.next_block(0):
        key = d.val()
        if key == "validity_days":
            if iss.get("validity_days"):
                raise d.err(f"validity days is already specified: {iss['validity_days']}")
            iss["validity_days"] = _int_arg(d, "number of days")
        elif key == "alt_http_port":
            iss["alternate_http_port"] = _int_arg(d, "port")
        elif key in ("dns", "propagation_delay", "propagation_timeout", "resolvers", "dns_ttl"):
            raise d.err(
                f"zerossl issuer property '{key}' (CNAME validation) is not supported by pyproxy"
            )
        else:
            raise d.err(f"unrecognized zerossl issuer property: {key}")
    # The field order of Caddy's ZeroSSLIssuer struct, as its JSON output has them.
    order = ("module", "api_key", "validity_days", "listen_host", "alternate_http_port")
    return {k: iss[k] for k in order if k in iss}


def parse_internal_issuer(d: Dispenser) -> JSONDict:
    d.next()
    iss: JSONDict = {"module": "internal"}
    while d.next_block(0):
        key = d.val()
        if key == "ca":
            iss["ca"] = _all_args_1(d)
        elif key == "lifetime":
            if not d.next_arg():
                raise d.arg_err()
            try:
                iss["lifetime"] = parse_duration(d.val())
            except DurationError as exc:
                # Caddy returns ParseDuration's bare error; the location is ours.
                raise d.wrap_err(exc) from None
        elif key == "sign_with_root":
            if d.next_arg():
                raise d.arg_err()
            iss["sign_with_root"] = True
        else:
            raise d.err(f"unrecognized subdirective '{key}'")
    return iss


def parse_issuer_module(d: Dispenser) -> JSONDict:
    """`d` is on the issuer module name; consumes that module's segment."""
    name = d.val()
    sub = d.new_from_next_segment()
    if name == "acme":
        return parse_acme_issuer(sub)
    if name == "internal":
        return parse_internal_issuer(sub)
    if name == "zerossl":
        return parse_zerossl_issuer(sub)
    raise d.err(
        f"getting module named 'tls.issuance.{name}': issuer '{name}' is not supported by "
        "pyproxy (acme, zerossl and internal are)"
    )


# -- issuers: defaults, global defaults, merging ------------------------------------------------


def default_issuers(email: str) -> list[JSONDict]:
    """Let's Encrypt, plus ZeroSSL when an email address is known."""
    issuers: list[JSONDict] = [{"module": "acme"}]
    if email.strip():
        issuers.append({"module": "acme", "ca": ZEROSSL_PRODUCTION_CA, "email": email})
    return issuers


def _merge(base: JSONDict, overrides: JSONDict) -> JSONDict:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if key == "trusted_roots_pem_files":
            roots = merged.setdefault(key, [])
            roots.extend(r for r in value if r not in roots)
        elif (
            isinstance(value, dict)
            and isinstance(merged.get(key), dict)
            and key not in ("preferred_chains", "external_account", "provider")
        ):
            # challenge settings merge field by field; other objects are replaced whole
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def implicit_acme_issuers(options: dict[str, Any], acme: JSONDict) -> list[JSONDict]:
    """The issuers a `tls` directive with ACME settings (email, ca, ...) stands for."""
    global_issuers = options.get("cert_issuer") or []
    implicit = [_merge(base, acme) for base in global_issuers if base.get("module") == "acme"]
    if implicit:
        return implicit
    if acme.get("ca"):
        defaults: list[JSONDict] = [{"module": "acme"}]
    else:
        defaults = default_issuers(str(acme.get("email", "")))
    return [_merge(base, acme) for base in defaults]


def fill_in_global_acme_defaults(issuer: JSONDict, options: dict[str, Any]) -> None:
    """Apply email/acme_ca/... global options to an ACME issuer, where it sets nothing."""
    if issuer.get("module") != "acme":
        return
    email = options.get("email")
    if email is not None and not issuer.get("email"):
        issuer["email"] = email
    ca = options.get("acme_ca")
    if ca is not None and not issuer.get("ca"):
        issuer["ca"] = ca
    ca_root = options.get("acme_ca_root")
    if ca_root is not None:
        roots = issuer.setdefault("trusted_roots_pem_files", [])
        if ca_root not in roots:
            roots.append(ca_root)
    eab = options.get("acme_eab")
    if eab is not None and "external_account" not in issuer:
        issuer["external_account"] = eab
    chains = options.get("preferred_chains")
    if chains is not None and "preferred_chains" not in issuer:
        issuer["preferred_chains"] = chains
    challenges = issuer.get("challenges") or {}
    http_port = options.get("http_port")
    if (
        http_port is not None
        and "dns" not in challenges
        and not challenges.get("http", {}).get("alternate_port")
    ):
        _challenges(issuer, "http")["alternate_port"] = http_port
    https_port = options.get("https_port")
    challenges = issuer.get("challenges") or {}
    if (
        https_port is not None
        and "dns" not in challenges
        and not challenges.get("tls-alpn", {}).get("alternate_port")
    ):
        _challenges(issuer, "tls-alpn")["alternate_port"] = https_port
    challenges = issuer.get("challenges") or {}
    if "dns" not in challenges and not challenges.get("bind_host"):
        default_bind = options.get("default_bind")
        if default_bind:
            addresses = default_bind[0].value.addresses
            if addresses:
                _challenges(issuer)["bind_host"] = addresses[0]
    lifetime = options.get("cert_lifetime")
    if lifetime is not None and not issuer.get("certificate_lifetime"):
        issuer["certificate_lifetime"] = lifetime


# -- automation policies ------------------------------------------------------------------------


@dataclass
class AutomationPolicy:
    subjects: list[str] = field(default_factory=list)
    issuers: list[JSONDict] = field(default_factory=list)  # Go's Issuers (objects)
    issuers_raw: list[JSONDict] | None = None  # Go's IssuersRaw (encoded)
    managers_raw: list[JSONDict] = field(default_factory=list)
    key_type: str = ""
    on_demand: bool = False
    reuse_private_keys: bool = False
    renewal_window_ratio: float = 0.0
    disable_ocsp_stapling: bool = False
    ocsp_overrides: dict[str, str] = field(default_factory=dict)
    must_staple: bool = False

    def copy(self) -> AutomationPolicy:
        return copy.copy(self)

    def to_json(self) -> JSONDict:
        out: JSONDict = {}
        if self.subjects:
            out["subjects"] = list(self.subjects)
        if self.issuers_raw:
            out["issuers"] = copy.deepcopy(self.issuers_raw)
        if self.managers_raw:
            out["get_certificate"] = self.managers_raw
        if self.must_staple:
            out["must_staple"] = True
        if self.renewal_window_ratio:
            out["renewal_window_ratio"] = self.renewal_window_ratio
        if self.key_type:
            out["key_type"] = self.key_type
        if self.on_demand:
            out["on_demand"] = True
        if self.reuse_private_keys:
            out["reuse_private_keys"] = True
        if self.disable_ocsp_stapling:
            out["disable_ocsp_stapling"] = True
        if self.ocsp_overrides:
            out["ocsp_overrides"] = self.ocsp_overrides
        return out


def new_base_automation_policy(options: dict[str, Any], always: bool) -> AutomationPolicy | None:
    """The policy global options imply; None (unless `always`) when they imply nothing."""
    has_issuers = "cert_issuer" in options
    has_local_certs = "local_certs" in options
    has_key_type = "key_type" in options
    has_ocsp = "ocsp_stapling" in options
    has_ratio = "renewal_window_ratio" in options
    has_global_automation = has_issuers or has_local_certs or has_key_type or has_ocsp or has_ratio
    has_acme_defaults = any(
        options.get(k) is not None
        for k in ("acme_ca", "acme_ca_root", "acme_eab", "preferred_chains")
    )
    if not has_global_automation and not has_acme_defaults:
        return AutomationPolicy() if always else None

    ap = AutomationPolicy()
    if has_key_type:
        ap.key_type = options["key_type"]
    if has_issuers and has_local_certs:
        raise ConfigError(
            "global options are ambiguous: local_certs is confusing when combined with "
            "cert_issuer, because local_certs is also a specific kind of issuer"
        )
    if has_issuers:
        ap.issuers = options["cert_issuer"]
    elif has_local_certs:
        ap.issuers = [{"module": "internal"}]
    if has_acme_defaults:
        for issuer in ap.issuers:
            fill_in_global_acme_defaults(issuer, options)
    if has_ocsp:
        ap.disable_ocsp_stapling = bool(options["ocsp_stapling"].get("disable_stapling"))
    if has_ratio:
        ap.renewal_window_ratio = options["renewal_window_ratio"]
    return ap


def subject_qualifies_for_public_cert(ap: AutomationPolicy, subject: str) -> bool:
    """Caddy's lenient variant: IPs and internal names never; `*.*.` only on demand."""
    return (
        not subject_is_ip(subject)
        and not subject_is_internal(subject)
        and (subject.count("*.") < 2 or ap.on_demand)
    )


def is_tailscale_domain(name: str) -> bool:
    return name.lower().endswith(".ts.net")


def _is_subset(a: AutomationPolicy, b: AutomationPolicy) -> bool:
    if not b.subjects:
        return True
    if not a.subjects:
        return False
    return all(any(match_wildcard(s, t) for t in b.subjects) for s in a.subjects)


def _shadows(i: int, aps: list[AutomationPolicy]) -> int:
    for j in range(i + 1, len(aps)):
        if _is_subset(aps[i], aps[j]):
            return j
    return -1


def _implicit_issuer_class(ap: AutomationPolicy) -> str:
    if not ap.subjects:
        return "catch-all"
    public = any(subject_qualifies_for_public_cert(ap, s) for s in ap.subjects)
    internal = any(not subject_qualifies_for_public_cert(ap, s) for s in ap.subjects)
    if public and internal:
        return "mixed"
    return "public" if public else "internal"


def _uses_default_internal_issuer(ap: AutomationPolicy) -> bool:
    if not ap.issuers_raw and not ap.issuers:
        return _implicit_issuer_class(ap) == "internal"
    return ap.issuers_raw == [INTERNAL_ISSUER] and not ap.issuers


def _same_issuers(a: AutomationPolicy, b: AutomationPolicy) -> bool:
    if (a.issuers_raw or None) == (b.issuers_raw or None):
        if a.issuers_raw or a.issuers or b.issuers_raw or b.issuers:
            return True
        a_class, b_class = _implicit_issuer_class(a), _implicit_issuer_class(b)
        return "catch-all" in (a_class, b_class) or a_class == b_class
    return _uses_default_internal_issuer(a) and _uses_default_internal_issuer(b)


def _same_settings(a: AutomationPolicy, b: AutomationPolicy) -> bool:
    return (
        _same_issuers(a, b)
        and a.managers_raw == b.managers_raw
        and a.must_staple == b.must_staple
        and a.key_type == b.key_type
        and a.on_demand == b.on_demand
        and a.reuse_private_keys == b.reuse_private_keys
        and a.renewal_window_ratio == b.renewal_window_ratio
    )


def consolidate_automation_policies(aps: list[AutomationPolicy]) -> list[AutomationPolicy]:
    """Order policies most specific first, drop empty/shadowed ones, merge equivalent ones."""

    def less(x: AutomationPolicy, y: AutomationPolicy) -> bool:
        if _is_subset(x, y):
            return True
        if _is_subset(y, x):
            return False
        return len(x.subjects) > len(y.subjects)

    aps = list(aps)
    go_stable_sort(aps, less)

    # an "empty" policy (nothing but subjects) only matters when it keeps a name away
    # from a less specific policy that would otherwise take it
    empty_count = 0
    original_len = len(aps)
    i = 0
    while i < len(aps):
        if aps[i] == AutomationPolicy(subjects=aps[i].subjects, managers_raw=[]):
            empty_count += 1
            shadow = _shadows(i, aps)
            empty = AutomationPolicy()
            if shadow >= 0:
                empty = AutomationPolicy(
                    subjects=aps[shadow].subjects, managers_raw=aps[shadow].managers_raw
                )
            if i == len(aps) - 1 or (shadow >= 0 and aps[shadow] == empty):
                del aps[i]
                continue
        i += 1
    if empty_count == original_len:
        return []

    i = 0
    while i < len(aps):
        restart = False
        j = i + 1
        while j < len(aps):
            if aps[i] == aps[j]:
                del aps[j]
                restart = True
                break
            if _same_settings(aps[i], aps[j]):
                if aps[i].subjects and not aps[j].subjects:
                    if _shadows(i, aps) >= j:
                        del aps[i]
                        restart = True
                        break
                else:
                    for subject in aps[j].subjects:
                        if subject not in aps[i].subjects:
                            aps[i].subjects = [*aps[i].subjects, subject]
                    del aps[j]
                    continue
            j += 1
        if restart:
            # Go decrements i and re-runs the outer loop at the same index
            continue
        i += 1
    return aps


# -- the tls app --------------------------------------------------------------------------------


def build_tls_app(pairings: list[Pairing], options: dict[str, Any]) -> JSONDict:
    """The `tls` app JSON for the site blocks (empty dict when there is nothing to say)."""
    certificates: JSONDict = {}
    automation: JSONDict = {}
    policies: list[AutomationPolicy] = []
    loaders: list[tuple[str, list[Any]]] = []

    http_port, _ = http_ports(options)
    auto_https = options.get("auto_https") or []

    hosts_shared_with_hostless: set[str] = set()
    if "off" not in auto_https:
        for p in pairings:
            for sb in p.blocks:
                for addr in sb.parsed_keys:
                    if addr.host:
                        continue
                    for other in sb.parsed_keys:
                        if other.original == addr.original:
                            continue
                        if other.host and other.scheme != "http" and other.port != http_port:
                            hosts_shared_with_hostless.add(other.host)
                    break

    catch_all = new_base_automation_policy(options, False)
    if catch_all is not None:
        policies.append(catch_all)

    forced_automated: set[str] = set()
    for p in pairings:
        if not listeners_use_any_port_other_than([a for a, _ in p.addresses], http_port):
            continue
        for sb in p.blocks:
            if sb.is_all_http():
                continue
            ap = new_base_automation_policy(options, True)
            assert ap is not None
            hosts = sb.hosts_from_keys(False)
            if not hosts and catch_all is not None:
                ap = catch_all
            if "tls.on_demand" in sb.pile:
                ap.on_demand = True
            if "tls.force_automate" in sb.pile:
                forced_automated.update(hosts)
            if "tls.reuse_private_keys" in sb.pile:
                ap.reuse_private_keys = True
            if "tls.key_type" in sb.pile:
                ap.key_type = sb.pile["tls.key_type"][0].value
            if "tls.renewal_window_ratio" in sb.pile:
                ap.renewal_window_ratio = sb.pile["tls.renewal_window_ratio"][0].value
            elif "renewal_window_ratio" in options:
                ap.renewal_window_ratio = options["renewal_window_ratio"]
            if "tls.cert_issuer" in sb.pile:
                issuers = [v.value for v in sb.pile["tls.cert_issuer"]]
                if ap is catch_all and ap.issuers != issuers:
                    raise ConfigError(
                        "automation policy from site block is also default/catch-all policy "
                        "because of key without hostname, and the two are in conflict: "
                        f"{ap.issuers} != {issuers}"
                    )
                ap.issuers = issuers
            for bind in sb.pile.get("bind", []):
                for issuer in ap.issuers:
                    if issuer.get("module") != "acme":
                        continue
                    challenges = _challenges(issuer)
                    if not challenges.get("bind_host"):
                        addresses = bind.value.addresses
                        if addresses and addresses[0]:
                            challenges["bind_host"] = addresses[0]
            if not hosts and catch_all is None:
                catch_all = ap

            ap.subjects = sorted(sb.hosts_from_keys_not_http(http_port))
            ap2: AutomationPolicy | None = None
            if not ap.issuers:
                internal: list[str] = []
                external: list[str] = []
                for subject in ap.subjects:
                    if is_tailscale_domain(subject):
                        continue
                    if not subject_qualifies_for_cert(subject):
                        raise ConfigError(f"subject does not qualify for certificate: '{subject}'")
                    if subject_qualifies_for_public_cert(ap, subject):
                        external.append(subject)
                    else:
                        internal.append(subject)
                if external and internal:
                    ap.subjects = external
                    ap2 = ap.copy()
                    ap2.subjects = internal
                    ap2.issuers_raw = [dict(INTERNAL_ISSUER)]
            policies.append(ap)
            if ap2 is not None:
                policies.append(ap2)
            for loader in sb.pile.get("tls.cert_loader", []):
                loaders.append(loader.value)

    by_name: dict[str, list[Any]] = {}
    for name, items in loaders:
        by_name.setdefault(name, []).extend(items)
    for name, items in by_name.items():
        certificates[name] = items

    on_demand = options.get("on_demand_tls")
    if on_demand is not None:
        automation["on_demand"] = on_demand
    app: JSONDict = {}
    if options.get("tls_resolvers"):
        app["resolvers"] = options["tls_resolvers"]
    if options.get("storage_check") == "off":
        app["disable_storage_check"] = True
    clean = options.get("storage_clean_interval")
    if clean is False:
        app["disable_storage_clean"] = True
    elif isinstance(clean, int) and not isinstance(clean, bool):
        automation["storage_clean_interval"] = clean
    if "renew_interval" in options:
        automation["renew_interval"] = options["renew_interval"]
    if "ocsp_interval" in options:
        automation["ocsp_interval"] = options["ocsp_interval"]
    ocsp = options.get("ocsp_stapling")
    if ocsp is not None and ocsp.get("disable_stapling"):
        app["disable_ocsp_stapling"] = True

    automate: list[str] = []
    internal_ap = AutomationPolicy(issuers_raw=[dict(INTERNAL_ISSUER)])
    if "off" not in auto_https and "disable_certs" not in auto_https:
        for host in hosts_shared_with_hostless:
            automate.append(host)
            if not certmagic_subject_qualifies_for_public_cert(host):
                internal_ap.subjects.append(host)
    for name in forced_automated:
        if name not in automate:
            automate.append(name)
    automate.sort()
    if automate:
        certificates["automate"] = automate
    if internal_ap.subjects:
        internal_ap.subjects.sort()
        policies.append(internal_ap)

    has_automation = bool(policies) or bool(automation)
    if has_automation:
        email = options.get("email")
        has_acme_defaults = email is not None or any(
            options.get(k) is not None
            for k in ("acme_ca", "acme_ca_root", "acme_eab", "preferred_chains")
        )
        if has_acme_defaults:
            for ap in policies:
                if not ap.issuers and _all_public_names(ap):
                    ap.issuers = default_issuers(email if isinstance(email, str) else "")
                    if options.get("acme_ca") is not None:
                        ap.issuers = [{"module": "acme"}]
        for ap in policies:
            for issuer in ap.issuers:
                fill_in_global_acme_defaults(issuer, options)
            if ap.issuers and ap.issuers_raw is None:
                ap.issuers_raw = copy.deepcopy(ap.issuers)
        policies = consolidate_automation_policies(policies)
        seen: set[str] = set()
        for ap in policies:
            for subject in ap.subjects:
                if subject in seen:
                    raise ConfigError(
                        "hostname appears in more than one automation policy, making "
                        f"certificate management ambiguous: {subject}"
                    )
                seen.add(subject)
        if policies:
            automation["policies"] = [ap.to_json() for ap in policies]

    if certificates:
        app["certificates"] = certificates
    if automation:
        app["automation"] = automation
    return app


def _all_public_names(ap: AutomationPolicy) -> bool:
    return not any(
        not subject_qualifies_for_public_cert(ap, s) or is_tailscale_domain(s) for s in ap.subjects
    )


def build_pki_app(options: dict[str, Any]) -> JSONDict:
    """Only `skip_install_trust` configures the PKI app from a Caddyfile here."""
    if "skip_install_trust" in options and "off" not in (options.get("auto_https") or []):
        return {"certificate_authorities": {"local": {"install_trust": False}}}
    return {}


# -- TLS connection policies of one server ------------------------------------------------------

_POLICY_SETTINGS = (
    "certificate_selection",
    "cipher_suites",
    "curves",
    "alpn",
    "protocol_min",
    "protocol_max",
    "client_authentication",
    "default_sni",
    "fallback_sni",
    "insecure_secrets_log",
)


def policy_settings_empty(cp: JSONDict) -> bool:
    return not any(cp.get(k) for k in _POLICY_SETTINGS)


def _settings_equal(a: JSONDict, b: JSONDict) -> bool:
    return {k: v for k, v in a.items() if k != "match"} == {
        k: v for k, v in b.items() if k != "match"
    }


def consolidate_conn_policies(cps: list[JSONDict]) -> list[JSONDict]:
    """Catch-all policies last; drop duplicates; merge adjacent SNI-only ones."""
    cps = list(cps)
    go_stable_sort(cps, lambda a, b: "match" not in b and "match" in a)
    i = 0
    while i < len(cps):
        restarted = False
        for j in range(len(cps)):
            if j == i:
                continue
            a, b = cps[i], cps[j]
            if a == b:
                del cps[j]
                restarted = True
                break
            if (
                i == j - 1
                and len(a.get("match") or {}) == 1
                and len(b.get("match") or {}) == 1
                and "sni" in a["match"]
                and "sni" in b["match"]
                and _settings_equal(a, b)
            ):
                a["match"] = {"sni": [*a["match"]["sni"], *b["match"]["sni"]]}
                del cps[j]
                restarted = True
                break
            if a.get("match") == b.get("match"):
                for key in ("alpn", "cipher_suites", "curves"):
                    if a.get(key) and b.get(key) and a[key] != b[key]:
                        raise ConfigError(
                            f"two policies with same match criteria have conflicting {key}"
                        )
                for key in ("default_sni", "fallback_sni", "protocol_min", "protocol_max"):
                    if a.get(key) and b.get(key) and a[key] != b[key]:
                        raise ConfigError(
                            f"two policies with same match criteria have conflicting {key}"
                        )
                if not a.get("client_authentication") and b.get("client_authentication"):
                    raise ConfigError(
                        "two policies with same match criteria have conflicting client auth "
                        "configuration"
                    )
                for key in (*_POLICY_SETTINGS,):
                    if key == "certificate_selection":
                        continue
                    if not a.get(key) and b.get(key):
                        a[key] = b[key]
                sel_a, sel_b = a.get("certificate_selection"), b.get("certificate_selection")
                if sel_b and not sel_a:
                    a["certificate_selection"] = sel_b
                elif sel_a and sel_b:
                    other_a = {k: v for k, v in sel_a.items() if k != "any_tag"}
                    other_b = {k: v for k, v in sel_b.items() if k != "any_tag"}
                    if other_a != other_b:
                        raise ConfigError(
                            "two policies with same match criteria have conflicting cert selections"
                        )
                    tags = list(sel_a.get("any_tag", []))
                    tags.extend(t for t in sel_b.get("any_tag", []) if t not in tags)
                    if tags:
                        sel_a["any_tag"] = tags
                del cps[j]
                restarted = True
                break
        if restarted:
            i = max(i - 1, 0) if False else i
            # Go: i-- then the loop's i++ re-examines the same index
            continue
        i += 1
    return cps
