"""Test helper shared by the TLS unit tests: a TLS handshake between two SSL objects in memory."""

from __future__ import annotations

import ssl


def memory_handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, sni: str | None
) -> tuple[ssl.SSLObject, ssl.SSLObject, bool]:
    """Run a handshake over memory BIOs: (client, server, whether the server side completed).

    The client must complete: AssertionError if it does not within 20 flights, the client's
    ssl.SSLError when the server refuses. A server error after the client completed (the server
    ending a handshake the client already took as done, as TLS 1.3 allows) ends the loop with
    the server not completed.
    """
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=sni)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done_c = done_s = False
    for _ in range(20):
        if not done_c:
            try:
                client.do_handshake()
                done_c = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not done_s:
            try:
                server.do_handshake()
                done_s = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                if not done_c:
                    raise
                break
        c_in.write(s_out.read())
        if done_c and done_s:
            break
    if not done_c:
        raise AssertionError("handshake did not finish")
    return client, server, done_s
