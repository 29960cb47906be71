# Included by ext/relay.pyx (before the classes whose fields use its types): the Linux socket and epoll declarations it calls
# (Cython ships no posix/socket.pxd).

cdef extern from "<errno.h>" nogil:
    enum:
        ECONNABORTED
        EPROTO
        EPERM
        EINPROGRESS
cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        unsigned int u32
        unsigned long long u64
    cdef struct epoll_event:
        unsigned int events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    enum:
        EPOLLIN
        EPOLLOUT
        EPOLLERR
        EPOLLHUP
        EPOLLRDHUP
        EPOLLET
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CLOEXEC

from posix.uio cimport iovec

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    cdef struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t sendmsg(int fd, const msghdr *msg, int flags)
    cdef struct sockaddr:
        unsigned short sa_family
    cdef struct sockaddr_storage:
        unsigned short ss_family
    int accept4(int fd, sockaddr *addr, socklen_t *addrlen, int flags)
    int socket(int domain, int type, int protocol)
    int connect(int fd, const sockaddr *addr, socklen_t addrlen)
    int getsockopt(int fd, int level, int name, void *value, socklen_t *size)
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int shutdown(int fd, int how)
    int setsockopt(int fd, int level, int name, const void *value, socklen_t size)
    int getsockname(int fd, sockaddr *addr, socklen_t *addrlen)
    enum:
        SOCK_NONBLOCK
        SOCK_STREAM
        SOL_SOCKET
        SO_ERROR
        SOCK_CLOEXEC
        MSG_NOSIGNAL
        MSG_MORE
        SHUT_WR
        AF_INET
        AF_INET6

cdef extern from "<netinet/in.h>" nogil:
    cdef struct in_addr:
        pass
    cdef struct in6_addr:
        pass
    cdef struct sockaddr_in:
        unsigned short sin_family
        unsigned short sin_port
        in_addr sin_addr
    cdef struct sockaddr_in6:
        unsigned short sin6_family
        unsigned short sin6_port
        unsigned int sin6_flowinfo
        in6_addr sin6_addr
        unsigned int sin6_scope_id
    unsigned short ntohs(unsigned short)
    unsigned short htons(unsigned short)
    unsigned int ntohl(unsigned int)
    enum:
        IPPROTO_TCP

cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY

cdef extern from "<arpa/inet.h>" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)
    int inet_pton(int af, const char *src, void *dst)
