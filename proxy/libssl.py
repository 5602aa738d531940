"""The few OpenSSL settings Python's ssl module does not expose, set through the same libssl.

proxy.tls needs three things the ssl module of Python 3.11 cannot do:

- the TLS key-exchange groups of a context (Caddy's `curves`). `SSLContext.set_ecdh_curve()`
  takes one name; on Python 3.11.2 (Debian bookworm) it goes through `EC_KEY_new_by_curve_name`,
  which knows only EC curves, so `X25519` fails with `[EC: UNKNOWN_GROUP]` (later 3.11 builds
  call `SSL_CTX_set1_groups`, still for one group; CPython issue #77063). `set_groups()` only
  arrives in Python 3.15. OpenSSL's own call is `SSL_CTX_set1_groups_list` (a macro over
  `SSL_CTX_ctrl(SSL_CTRL_SET_GROUPS_LIST)`);
- the session ticket keys of a context (`SSL_CTX_set_tlsext_ticket_keys`, again a ctrl), so
  that every worker process encrypts and decrypts tickets with the same key;
- the server session cache mode (`SSL_CTX_set_session_cache_mode`), and per connection the
  cipher list (`SSL_set_cipher_list`) once the SNI callback has chosen a policy;
- the client's ALPN list at SNI time, for TLS-ALPN-01 (RFC 8737: the CA offers exactly
  `acme-tls/1`, and must get the challenge certificate). Python's SNI callback runs before ALPN
  is negotiated and the ssl module shows no ClientHello. `SSL_client_hello_get0_ext` inside the
  servername callback finds the ALPN extension but empty (OpenSSL 3.0 has parsed, and so
  consumed, it by then: verified on this machine's 3.0), so a ClientHello callback
  (`SSL_CTX_set_client_hello_cb`, run before any extension is parsed) reads it and leaves one
  flag on the connection (`SSL_set_ex_data`, freed with the SSL), which the SNI callback reads
  (`hello_offers_only_acme_tls`). The callback is a ctypes function: it takes the GIL itself
  (OpenSSL calls it while the ssl module has released it), never raises, and always sets the
  flag, so a connection can never see a flag left by an earlier one.

How, and why this is safe:

- The functions are looked up through the `_ssl` extension module's own handle
  (`ctypes.CDLL(_ssl.__file__)`: dlsym on a handle searches that object's dependencies), so they
  are those of the libssl the ssl module is linked with, never a second copy. pyOpenSSL is no
  alternative: it drives the OpenSSL bundled in the `cryptography` wheel, a different library
  instance whose functions must never see a context of the system libssl, and its contexts are
  not `ssl.SSLContext`s, which asyncio needs.
- The `SSL_CTX *` of an `ssl.SSLContext` is the first field after `PyObject_HEAD` of CPython's
  `PySSLContext` (Modules/_ssl.c), the `SSL *` of an `_ssl._SSLSocket` the second (after the
  `Socket` weakref); both layouts have been the same since Python 3.2. The header's size is
  `object.__basicsize__` (so debug and free-threaded builds are covered).
- Nothing is trusted blindly: the bridge starts only on CPython, when the library's
  `OpenSSL_version_num()` equals `ssl.OPENSSL_VERSION_NUMBER`, and after a probe proved the
  layout: a fresh context's options, changed through Python, read back the same through the
  pointer, and a fresh connection's `SSL_get_SSL_CTX()` is that context's pointer. Every later
  call checks the object's type; every connection call checks `SSL_get_SSL_CTX()` again.
  Otherwise `available()` is False with the reason, and proxy.tls turns a setting that needs
  the bridge into a config error (or, for the ticket keys, a warning: tickets still work, per
  worker).
- A failed call leaves OpenSSL's per-thread error queue empty again (ERR_clear_error): an error
  left there would be reported by the ssl module's next failing call on the same thread.
"""

from __future__ import annotations

import _ssl
import ctypes
import platform
import ssl
import threading
from typing import Final

# <openssl/ssl.h>: the ctrl numbers, stable across OpenSSL 1.1.1 and 3.x.
SSL_CTRL_SET_SESS_CACHE_MODE: Final = 44
SSL_CTRL_GET_SESS_CACHE_MODE: Final = 45
SSL_CTRL_GET_TLSEXT_TICKET_KEYS: Final = 58
SSL_CTRL_SET_TLSEXT_TICKET_KEYS: Final = 59
SSL_CTRL_SET_GROUPS_LIST: Final = 92
SSL_SESS_CACHE_OFF: Final = 0
TLSEXT_TYPE_ALPN: Final = 16  # RFC 7301 section 3.1
SSL_CLIENT_HELLO_SUCCESS: Final = 1
CRYPTO_EX_INDEX_SSL: Final = 0
# The ALPN extension_data of a ClientHello offering exactly `acme-tls/1` (RFC 7301 section 3.1:
# a 2-byte list length, then each name with a 1-byte length): RFC 8737 section 3's CA hello.
ACME_TLS_ONLY_ALPN: Final = b"\x00\x0b\x0aacme-tls/1"
_CLIENT_HELLO_CB: Final = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.c_void_p
)

_POINTER_SIZE: Final = ctypes.sizeof(ctypes.c_void_p)
_SSL_SOCKET_TYPE: Final = getattr(_ssl, "_SSLSocket", None)  # not in typeshed
_HEAD_SIZE: Final = object.__basicsize__  # PyObject_HEAD


class LibSSLError(ValueError):
    """OpenSSL refused a setting; the message is OpenSSL's reason."""


class LibSSL:
    """The bound functions; get the process-wide instance from `bridge()`."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        vp, c_int, c_long = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
        self._ctx_ctrl = lib.SSL_CTX_ctrl
        self._ctx_ctrl.restype = c_long
        self._ctx_ctrl.argtypes = [vp, c_int, c_long, vp]
        self._get_options = lib.SSL_CTX_get_options
        # uint64_t since OpenSSL 3.0, unsigned long before.
        wide = ssl.OPENSSL_VERSION_INFO >= (3,)
        self._get_options.restype = ctypes.c_uint64 if wide else ctypes.c_ulong
        self._get_options.argtypes = [vp]
        self._get_ssl_ctx = lib.SSL_get_SSL_CTX
        self._get_ssl_ctx.restype = vp
        self._get_ssl_ctx.argtypes = [vp]
        self._ssl_ctrl = lib.SSL_ctrl
        self._ssl_ctrl.restype = c_long
        self._ssl_ctrl.argtypes = [vp, c_int, c_long, vp]
        self._set_cipher_list = lib.SSL_set_cipher_list
        self._set_cipher_list.restype = c_int
        self._set_cipher_list.argtypes = [vp, ctypes.c_char_p]
        self._err_get = lib.ERR_get_error
        self._err_get.restype = ctypes.c_ulong
        self._err_get.argtypes = []
        self._err_reason = lib.ERR_reason_error_string
        self._err_reason.restype = ctypes.c_char_p
        self._err_reason.argtypes = [ctypes.c_ulong]
        self._err_clear = lib.ERR_clear_error
        self._err_clear.restype = None
        self._err_clear.argtypes = []
        size_p = ctypes.POINTER(ctypes.c_size_t)
        self._hello_get0_ext = lib.SSL_client_hello_get0_ext
        self._hello_get0_ext.restype = c_int
        self._hello_get0_ext.argtypes = [vp, ctypes.c_uint, ctypes.POINTER(vp), size_p]
        self._set_client_hello_cb = lib.SSL_CTX_set_client_hello_cb
        self._set_client_hello_cb.restype = None
        self._set_client_hello_cb.argtypes = [vp, _CLIENT_HELLO_CB, vp]
        self._set_ex_data = lib.SSL_set_ex_data
        self._set_ex_data.restype = c_int
        self._set_ex_data.argtypes = [vp, c_int, vp]
        self._get_ex_data = lib.SSL_get_ex_data
        self._get_ex_data.restype = vp
        self._get_ex_data.argtypes = [vp, c_int]
        new_index = lib.CRYPTO_get_ex_new_index
        new_index.restype = c_int
        new_index.argtypes = [c_int, c_long, vp, vp, vp, vp]
        # SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL) is this macro; -1 on failure.
        self._acme_flag_index = int(new_index(CRYPTO_EX_INDEX_SSL, 0, None, None, None, None))
        if self._acme_flag_index < 0:
            self._err_clear()
            raise LibSSLError("no SSL ex_data index for the ALPN flag")
        # Kept for the life of the process: OpenSSL holds the bare function pointer.
        self._client_hello_cb = _CLIENT_HELLO_CB(self._on_client_hello)

    # -- pointers -------------------------------------------------------------------------------

    @staticmethod
    def _read_pointer(obj: object, offset: int) -> int:
        value = ctypes.c_void_p.from_address(id(obj) + offset).value
        if not value:
            raise LibSSLError("no OpenSSL object behind this Python object")
        return value

    def ctx_pointer(self, ctx: ssl.SSLContext) -> int:
        if not isinstance(ctx, _ssl._SSLContext):
            raise TypeError(f"expected an ssl.SSLContext, got {type(ctx).__name__}")
        return self._read_pointer(ctx, _HEAD_SIZE)

    def ssl_pointer(self, conn: ssl.SSLObject | ssl.SSLSocket) -> int:
        """The `SSL *` of a connection, checked against the context it reports."""
        c_object = getattr(conn, "_sslobj", None)
        if type(c_object) is not _SSL_SOCKET_TYPE:
            raise TypeError("the connection has no _ssl._SSLSocket (not started or closed)")
        pointer = self._read_pointer(c_object, _HEAD_SIZE + _POINTER_SIZE)
        if self._get_ssl_ctx(pointer) != self.ctx_pointer(conn.context):
            raise LibSSLError("the connection's SSL does not belong to its context")
        return pointer

    # -- calls ----------------------------------------------------------------------------------

    def _failure(self, what: str) -> LibSSLError:
        code = self._err_get()
        reason = self._err_reason(code) if code else None
        self._err_clear()
        text = reason.decode(errors="replace") if reason else "refused"
        return LibSSLError(f"{what}: {text}")

    def options(self, ctx: ssl.SSLContext) -> int:
        return int(self._get_options(self.ctx_pointer(ctx)))

    def set_groups(self, ctx: ssl.SSLContext, groups: str) -> None:
        """SSL_CTX_set1_groups_list: the key-exchange groups, most preferred first."""
        if self._ctx_ctrl(self.ctx_pointer(ctx), SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode()) != 1:
            raise self._failure(f"groups {groups!r}")

    def ticket_key_length(self, ctx: ssl.SSLContext) -> int:
        """How many bytes SSL_CTX_set_tlsext_ticket_keys takes (80 in OpenSSL 1.1.0 and later:
        16 name + 32 HMAC + 32 AES)."""
        return int(self._ctx_ctrl(self.ctx_pointer(ctx), SSL_CTRL_SET_TLSEXT_TICKET_KEYS, 0, None))

    def set_ticket_keys(self, ctx: ssl.SSLContext, keys: bytes) -> None:
        buf = ctypes.create_string_buffer(keys, len(keys))
        pointer = self.ctx_pointer(ctx)
        if self._ctx_ctrl(pointer, SSL_CTRL_SET_TLSEXT_TICKET_KEYS, len(keys), buf) != 1:
            raise self._failure("session ticket keys")
        ctypes.memset(buf, 0, len(keys))  # no stray copy of the key in this buffer

    def ticket_keys(self, ctx: ssl.SSLContext) -> bytes:
        length = self.ticket_key_length(ctx)
        buf = ctypes.create_string_buffer(length)
        if self._ctx_ctrl(self.ctx_pointer(ctx), SSL_CTRL_GET_TLSEXT_TICKET_KEYS, length, buf) != 1:
            raise self._failure("reading session ticket keys")
        return buf.raw

    def set_session_cache_mode(self, ctx: ssl.SSLContext, mode: int) -> None:
        # SSL_CTX_set_session_cache_mode returns the previous mode, never fails.
        self._ctx_ctrl(self.ctx_pointer(ctx), SSL_CTRL_SET_SESS_CACHE_MODE, mode, None)

    def session_cache_mode(self, ctx: ssl.SSLContext) -> int:
        return int(self._ctx_ctrl(self.ctx_pointer(ctx), SSL_CTRL_GET_SESS_CACHE_MODE, 0, None))

    def set_connection_groups(self, conn: ssl.SSLObject | ssl.SSLSocket, groups: str) -> None:
        """SSL_set1_groups_list on one connection."""
        if (
            self._ssl_ctrl(self.ssl_pointer(conn), SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode())
            != 1
        ):
            raise self._failure(f"groups {groups!r}")

    def _on_client_hello(self, ssl_pointer: int | None, _alert: object, _arg: object) -> int:
        """SSL_client_hello_cb_fn: flag a hello whose ALPN is exactly `acme-tls/1`.

        Runs inside OpenSSL; must not raise (ctypes would print the error and return 0, failing
        the handshake), so every outcome sets the flag and reports success.
        """
        if not ssl_pointer:
            return SSL_CLIENT_HELLO_SUCCESS
        try:
            data = ctypes.c_void_p()
            length = ctypes.c_size_t()
            found = self._hello_get0_ext(
                ssl_pointer, TLSEXT_TYPE_ALPN, ctypes.byref(data), ctypes.byref(length)
            )
            only_acme = (
                found == 1
                and data.value is not None
                and length.value == len(ACME_TLS_ONLY_ALPN)
                and ctypes.string_at(data.value, length.value) == ACME_TLS_ONLY_ALPN
            )
            self._set_ex_data(ssl_pointer, self._acme_flag_index, 1 if only_acme else None)
        except Exception:  # see the docstring: the flag stays unset (a normal hello)
            self._set_ex_data(ssl_pointer, self._acme_flag_index, None)
        return SSL_CLIENT_HELLO_SUCCESS

    def watch_acme_tls_hellos(self, ctx: ssl.SSLContext) -> None:
        """Install the ClientHello callback on a listener context (see the module docstring)."""
        self._set_client_hello_cb(self.ctx_pointer(ctx), self._client_hello_cb, None)

    def hello_offers_only_acme_tls(self, conn: ssl.SSLObject | ssl.SSLSocket) -> bool:
        """In the SNI callback: did this connection's ClientHello offer ALPN `acme-tls/1` only?

        False unless the connection's listener context has `watch_acme_tls_hellos`.
        """
        return bool(self._get_ex_data(self.ssl_pointer(conn), self._acme_flag_index))

    def set_connection_ciphers(self, conn: ssl.SSLObject | ssl.SSLSocket, ciphers: str) -> None:
        """SSL_set_cipher_list on one connection (TLS 1.2 and older suites)."""
        if self._set_cipher_list(self.ssl_pointer(conn), ciphers.encode()) != 1:
            raise self._failure(f"ciphers {ciphers!r}")


def _load() -> LibSSL:
    if platform.python_implementation() != "CPython":
        raise LibSSLError(f"{platform.python_implementation()} is not CPython")
    path = getattr(_ssl, "__file__", None)  # None: _ssl is built into the interpreter
    lib = LibSSL(ctypes.CDLL(path))
    version = lib._lib.OpenSSL_version_num
    version.restype = ctypes.c_ulong
    version.argtypes = []
    if version() != ssl.OPENSSL_VERSION_NUMBER:
        raise LibSSLError(
            f"libssl reports version {version():#x}, the ssl module {ssl.OPENSSL_VERSION_NUMBER:#x}"
        )
    _probe(lib)
    return lib


def _probe(lib: LibSSL) -> None:
    """Prove the object layout on throwaway objects before any real context is touched."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for _ in range(2):  # both ways round: a coincidence cannot pass twice
        ctx.options ^= ssl.OP_NO_TICKET
        if lib.options(ctx) != int(ctx.options):
            raise LibSSLError("SSLContext layout not recognised (options differ)")
    conn = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    lib.ssl_pointer(conn)  # raises unless SSL_get_SSL_CTX(ssl) is the context's pointer


_lock = threading.Lock()
_bridge: LibSSL | None = None
_unavailable: str | None = None


def bridge() -> LibSSL | None:
    """The process-wide bridge, or None when it cannot be used (see `unavailable_reason()`)."""
    global _bridge, _unavailable
    if _bridge is not None or _unavailable is not None:
        return _bridge
    with _lock:
        if _bridge is None and _unavailable is None:
            try:
                _bridge = _load()
            except (OSError, AttributeError, TypeError, LibSSLError) as exc:
                _unavailable = f"cannot reach libssl from Python's ssl module: {exc}"
    return _bridge


def unavailable_reason() -> str | None:
    bridge()
    return _unavailable
