# Included by ext/relay.pyx (one extension module: see the note there): adopt(), a client
# socket accepted and read from elsewhere put on the compiled accept path. A listener with
# proxy_protocol (fastproxy.server.proxied) accepts and reads the PROXY header in Python;
# a plain HTTP/1.1 one then hands the socket here with the header's client address, so its
# requests cost what they cost on any plain listener (through uvloop's transport instead,
# ~50% more instructions per keep-alive request: callgrind, README "PROXY protocol").


def adopt(GatedAccepting factory, Poller poller, int fd, int family, bytes packed, int port):
    """Serve fd (an accepted non-blocking client socket, now owned here) as the Acceptor
    serves what it accepts, with the peer address (family, packed address, port)."""
    cdef sockaddr_storage addr
    cdef sockaddr_in *a4
    cdef sockaddr_in6 *a6
    cdef SockTransport t
    cdef Admission adm = factory.adm
    memset(&addr, 0, sizeof(addr))
    if family == AF_INET and len(packed) == 4:
        a4 = <sockaddr_in*>&addr
        a4.sin_family = AF_INET
        a4.sin_port = htons(port)
        memcpy(&a4.sin_addr, <char*>packed, 4)
    elif family == AF_INET6 and len(packed) == 16:
        a6 = <sockaddr_in6*>&addr
        a6.sin6_family = AF_INET6
        a6.sin6_port = htons(port)
        memcpy(&a6.sin6_addr, <char*>packed, 16)
    else:
        raise ValueError(f"adopt: not an IPv4 or IPv6 address: {family}, {packed!r}")
    t = SockTransport.__new__(SockTransport)
    t.setup(fd, &addr, sizeof(addr), poller)
    try:
        held = adm.admit(factory.make)
        if held is None:
            proto = ClientConnection.__new__(ClientConnection)
            (<ClientConnection>proto)._init(factory.holder.current)
        else:
            proto = held
    except Exception as exc:
        t._force_close(exc)     # the socket is not left open behind a failure
        raise
    t.start(proto)
    if held is None and adm.pending > 0:
        adm.pending -= 1        # in the connection set now (see Acceptor.ready)
