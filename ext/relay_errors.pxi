# Included by ext/relay.pyx (one extension module: see the note there).
# Answers the proxy writes itself: errors with a short reason, and the interim 100; each
# carries a Date (RFC 9110 6.6.1).
# The one definition (fastproxy.proxy.errors re-exports it for the Python layer).

REASONS = {
    100: "Continue", 200: "OK", 204: "No Content", 301: "Moved Permanently", 302: "Found",
    303: "See Other", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    411: "Length Required", 413: "Content Too Large", 414: "URI Too Long",
    417: "Expectation Failed", 418: "I'm a teapot", 421: "Misdirected Request",
    429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
cdef bytes _CONTINUE_100 = CONTINUE_100


cpdef bytes error_response(int status, str detail, bint close=True, bytes extra=b"",
                           bint head_only=False):
    """A complete HTTP/1.1 error response with a one-line text/plain body naming the reason."""
    reason = REASONS.get(status, "Error")
    body = f"{status} {reason}: {detail}\n".encode("utf-8", "replace")
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
    ).encode() + _date_line() + extra + (b"Connection: close\r\n\r\n" if close else b"\r\n")
    return head if head_only else head + body


def date_line() -> bytes:
    """`Date: <IMF-fixdate>\\r\\n` for now (RFC 9110 6.6.1: a server's own 2xx, 3xx and 4xx
    answers MUST carry one), formatted once per second for every caller."""
    return _date_line()
