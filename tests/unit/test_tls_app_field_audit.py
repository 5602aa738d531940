"""Every field config/tls_app_fields.py declares is either honoured or refused by name.

A declared field that is neither refused nor read by the runtime is a config key accepted and
then silently ignored: the bug issue #11 removes. The check is textual, like
test_model_field_audit.py: an honoured field's name must be a string literal (`"key_type"`) in
the runtime code that reads that object, unless its `honoured` note says why the value already
is pyproxy's behaviour; an object-valued field is audited through its own fields. Every refused
field is then set in a config and must be refused with its JSON path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from config import tls_app_fields as tf
from config.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CERTS = ROOT / "proxy" / "certs.py"
TLS = ROOT / "proxy" / "tls.py"
ISSUER = ROOT / "acme_client" / "issuer.py"
AUTO_HTTPS = ROOT / "config" / "auto_https.py"
ZEROSSL_API = ROOT / "acme_client" / "zerossl_api.py"

# The runtime code that reads each object of the tls app.
READERS: dict[str, tuple[Path, ...]] = {
    "caddytls.TLS": (CERTS, TLS),
    "caddytls.TLS.certificates": (CERTS, AUTO_HTTPS),
    "caddytls.CertKeyFilePair": (CERTS,),
    "caddytls.CertKeyPEMPair": (CERTS,),
    "caddytls.AutomationConfig": (CERTS, AUTO_HTTPS),
    "caddytls.AutomationPolicy": (CERTS, AUTO_HTTPS),
    "caddytls.ACMEIssuer": (ISSUER,),
    "acme.EAB": (ISSUER,),
    "caddytls.ChainPreference": (ISSUER,),
    "caddytls.ChallengesConfig": (ISSUER,),
    "caddytls.HTTPChallengeConfig": (ISSUER,),
    "caddytls.TLSALPNChallengeConfig": (ISSUER,),
    "caddytls.InternalIssuer": (CERTS,),
    "caddytls.ZeroSSLIssuer": (ZEROSSL_API,),
    "caddytls.SessionTicketService": (TLS,),
    "caddytls.SessionTicketService.key_source": (TLS,),
    "caddytls.CertCacheOptions": (CERTS,),
}

# Fields declared honoured before the runtime reads them (work landing separately). Empty: the
# second test below fails when a listed field becomes read, so the list only shrinks.
PENDING: frozenset[str] = frozenset()


def _literal(name: str, files: tuple[Path, ...]) -> bool:
    pattern = re.compile(rf"[\"']{re.escape(name)}[\"']")
    return any(pattern.search(p.read_text(encoding="utf-8")) for p in files)


def unhonoured(specs: tuple[tf.ObjectSpec, ...]) -> list[str]:
    out = []
    for spec in specs:
        for name, field in spec.fields.items():
            qualified = f"{spec.name}.{name}"
            if field.refused or field.honoured or qualified in PENDING:
                continue
            if field.obj is not None:
                continue  # a container: its own fields are audited where it is read
            if not _literal(name, READERS.get(spec.name, ())):
                out.append(qualified)
    return out


def test_every_declared_field_is_honoured_or_refused() -> None:
    assert unhonoured(tf.ALL_SPECS) == [], "declared, not refused, and no runtime code reads it"


def test_pending_fields_are_still_pending() -> None:
    # A gap that got implemented must leave the list (so the list only shrinks).
    read = sorted(q for q in PENDING if _literal(q.rsplit(".", 1)[1], READERS[q.rsplit(".", 1)[0]]))
    assert read == [], f"now read by the runtime; remove from PENDING: {read}"


def test_the_audit_catches_a_field_nobody_reads() -> None:
    fake = tf.ObjectSpec("caddytls.ACMEIssuer", {"no_such_tls_field_x": tf.FieldSpec("string")})
    assert unhonoured((fake,)) == ["caddytls.ACMEIssuer.no_such_tls_field_x"]


# ---- the declarations are complete and refusals really happen ---------------------------------

Wrap = Callable[[dict[str, Any]], dict[str, Any]]


def _under(wrap: Wrap, name: str, in_list: bool = False, module: str = "") -> Wrap:
    """`wrap` for an object placed at `name` (in a one-element list; with an issuer module)."""

    def place(obj: dict[str, Any]) -> dict[str, Any]:
        inner = {"module": module, **obj} if module else obj
        return wrap({name: [inner] if in_list else inner})

    return place


def walk(spec: tf.ObjectSpec, path: str, wrap: Wrap) -> Iterator[tuple[tf.ObjectSpec, str, Wrap]]:
    """Each object spec reachable from `spec`, with its JSON path and a function that puts an
    object of that spec where it belongs in a whole config."""
    yield spec, path, wrap
    for name, field in spec.fields.items():
        if field.refused:
            continue
        if field.kind == "object" and field.obj is not None:
            yield from walk(field.obj, f"{path}.{name}", _under(wrap, name))
        elif field.kind == "objects" and field.obj is not None:
            yield from walk(field.obj, f"{path}.{name}[0]", _under(wrap, name, in_list=True))
        elif field.kind == "issuers":
            for module, issuer in tf.ISSUERS.items():
                yield from walk(issuer, f"{path}.{name}[0]", _under(wrap, name, True, module))


def _root(obj: dict[str, Any]) -> dict[str, Any]:
    return {"apps": {"tls": obj}}


REACHABLE = list(walk(tf.TLS_APP, "apps.tls", _root))

# A value that is not the zero value of each kind.
SAMPLES: dict[str, Any] = {
    "string": "x",
    "bool": True,
    "int": 1,
    "number": 0.5,
    "duration": "1s",
    "strings": ["x"],
    "string_map": {"a": "b"},
    "object": {"a": "b"},
    "objects": [{}],
    "any": {"a": "b"},
}


def test_all_specs_lists_every_reachable_object_and_each_has_readers() -> None:
    reachable = {spec.name for spec, _, _ in REACHABLE}
    assert reachable == {spec.name for spec in tf.ALL_SPECS}
    assert reachable <= set(READERS)


REFUSED = [
    pytest.param(wrap({name: SAMPLES[field.kind]}), f"{path}.{name}", id=f"{path}.{name}")
    for spec, path, wrap in REACHABLE
    for name, field in spec.fields.items()
    if field.refused
]


@pytest.mark.parametrize(("config", "where"), REFUSED)
def test_every_refused_field_is_refused_with_its_path(config: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as info:
        tf.check_tls_app(config)
    assert str(info.value).startswith(f"{where}: not supported by pyproxy: ")


def test_there_are_refused_fields_at_every_level() -> None:
    assert len(REFUSED) >= 20
