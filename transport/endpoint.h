// Endpoint: where a peer listens, as a plain value (numeric host and port). Kept apart from
// transport/tcp.h so embedders can name peers without seeing libuv.
// Thread-compatible value type.
#pragma once

#include <cstdint>
#include <string>

namespace sluice::transport {

struct Endpoint {
  std::string host = "127.0.0.1";  // numeric IPv4 or IPv6 address
  uint16_t port = 0;
  // "host:port", IPv6 hosts in brackets.
  std::string ToString() const;
  bool operator<(const Endpoint& o) const {
    return host < o.host || (host == o.host && port < o.port);
  }
  bool operator==(const Endpoint& o) const = default;
};

}  // namespace sluice::transport
