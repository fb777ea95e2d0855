// Whether the client of an HTTP request has closed its connection, asked without reading.
//
// cpp-httplib 0.11 gives handlers no access to the connection's socket, and its
// DataSink::is_writable() only asks whether the socket has room to write, which stays true after
// the client has gone. Without a probe, a client that gives up on a long non-streamed answer
// would keep its slot busy until max_tokens. So the probe finds the connection's socket among
// the process's descriptors (/proc/self/fd) by its address pair: local = the address and port the
// request came in on, peer = the client's. The pair is unique while the handler runs, since
// httplib closes the connection only after the response. closed() then polls the socket for
// POLLRDHUP / POLLHUP (the client shut its side or reset), which consumes nothing.
// Linux only; elsewhere found() is false and disconnects are seen only when a write fails.
#pragma once

#include <string>

namespace glq::server {

class PeerProbe {
 public:
  PeerProbe() = default;
  PeerProbe(const std::string& local_addr, int local_port, const std::string& remote_addr, int remote_port);
  bool found() const { return fd_ >= 0; }
  // True once the client has closed (or reset) the connection; false when not found.
  bool closed() const;

 private:
  int fd_ = -1;
};

}  // namespace glq::server
