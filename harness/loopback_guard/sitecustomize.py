"""Loopback guard: refuse every network destination that is not this machine.

The test suite must never send a packet off-box, even when the product has a
bug (a wrong host in a config, a gateway hop to a real name, a DNS lookup).
Installed automatically in any Python started with PYTHONPATH pointing at
this directory (sitecustomize is imported at interpreter start-up), and by
harness.loopback.install_loopback_guard for the pytest process itself (tests/conftest.py).

The check happens before the original socket call, so a refused destination
never sees a SYN, a UDP datagram or a DNS query.
"""

import ipaddress
import socket

MARK = "__loopback_guard__"


class LoopbackGuardError(OSError):
    """Raised instead of touching a non-loopback destination."""


def is_loopback_host(host):
    """True for 127.0.0.0/8, ::1 (also v4-mapped) and the name 'localhost'.
    Any other *name* is refused without resolving it: resolving is traffic."""
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    host = str(host).split("%", 1)[0]
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def is_allowed(family, address):
    """AF_UNIX paths are local by definition; IP families must be loopback;
    anything else (packet sockets, ...) is refused."""
    if family == getattr(socket, "AF_UNIX", None):
        return True
    if family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        return is_loopback_host(address[0])
    return False


def check(sock, address):
    if not is_allowed(sock.family, address):
        raise LoopbackGuardError("loopback guard: refusing to connect to %r" % (address,))


def _guarded(original, address_of):
    """Wrap a socket method; address_of(args) picks the destination or None."""
    def wrapper(self, *args, **kwargs):
        address = address_of(args)
        if address is not None:
            check(self, address)
        return original(self, *args, **kwargs)
    wrapper.__name__ = original.__name__
    wrapper.__doc__ = original.__doc__
    setattr(wrapper, MARK, original)
    return wrapper


def _guarded_getaddrinfo(original):
    """Let literals through (no traffic) but refuse DNS names other than
    localhost, because a lookup itself leaves the box."""
    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not is_loopback_host(host):
            text = host.decode("ascii", "replace") if isinstance(host, bytes) else str(host)
            try:
                ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                raise LoopbackGuardError(
                    "loopback guard: refusing to resolve %r" % (host,)) from None
        return original(host, *args, **kwargs)
    setattr(getaddrinfo, MARK, original)
    return getaddrinfo


_SOCKET_METHODS = {
    "connect": lambda args: args[0] if args else None,
    "connect_ex": lambda args: args[0] if args else None,
    "sendto": lambda args: args[-1] if len(args) >= 2 else None,
    "sendmsg": lambda args: args[3] if len(args) >= 4 else None,
}


def installed():
    return hasattr(socket.socket.connect, MARK)


def install():
    """Patch socket.socket and socket.getaddrinfo; idempotent."""
    if installed():
        return
    for name, address_of in _SOCKET_METHODS.items():
        setattr(socket.socket, name, _guarded(getattr(socket.socket, name), address_of))
    socket.getaddrinfo = _guarded_getaddrinfo(socket.getaddrinfo)


if __name__ == "sitecustomize":
    install()
