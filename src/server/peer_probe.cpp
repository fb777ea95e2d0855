// Finding a connection's socket by its address pair and polling it (see peer_probe.hpp).
#include "peer_probe.hpp"

#include <dirent.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>

#include <cstdlib>
#include <string>

namespace glq::server {

namespace {

// Numeric host and port of a socket address, as httplib reports them (getnameinfo).
bool host_port(const sockaddr_storage& a, socklen_t len, std::string& host, int& port) {
  char h[NI_MAXHOST];
  char p[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&a), len, h, sizeof h, p, sizeof p,
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return false;
  host = h;
  port = std::atoi(p);
  return true;
}

}  // namespace

PeerProbe::PeerProbe(const std::string& local_addr, int local_port, const std::string& remote_addr,
                     int remote_port) {
#ifdef __linux__
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return;
  const int own = dirfd(dir);
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    const int fd = std::atoi(e->d_name);
    if (fd == own) continue;
    sockaddr_storage a{};
    socklen_t len = sizeof a;
    std::string host;
    int port = -1;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) continue;  // not a socket
    if (!host_port(a, len, host, port) || port != local_port || host != local_addr) continue;
    len = sizeof a;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) continue;  // listening socket
    if (!host_port(a, len, host, port) || port != remote_port || host != remote_addr) continue;
    fd_ = fd;
    break;
  }
  closedir(dir);
#else
  (void)local_addr, (void)local_port, (void)remote_addr, (void)remote_port;
#endif
}

bool PeerProbe::closed() const {
#ifdef __linux__
  if (fd_ < 0) return false;
  pollfd p{fd_, POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
#else
  return false;
#endif
}

}  // namespace glq::server
