// systemd readiness notification (sd_notify's datagram protocol, written here so that sluiced
// needs no libsystemd): "READY=1" once listening, "STOPPING=1" when shutdown begins,
// "RELOADING=1"/"READY=1" around a SIGHUP reload. Does nothing when NOTIFY_SOCKET is unset.
// Thread-safe (one datagram per call).
#pragma once

#include <string>

namespace sluice::daemon {

// Sends `state` (e.g. "READY=1\nSTATUS=listening on 7070") to $NOTIFY_SOCKET ("/path" or
// "@abstract"). Returns false when the variable is unset or the send failed.
bool NotifySystemd(const std::string& state);

}  // namespace sluice::daemon
