// Signal names <-> numbers, the one table used by reap (exit reports) and kill.
#pragma once

#include <optional>
#include <string>

namespace mos {

// `SIGKILL`, `SIGRTMIN+3`, or `SIG<n>` for a number with no name (glibc's reserved 32 and 33).
std::string SignalName(int signal);

// Accepts every name SignalName produces plus the usual aliases (SIGIOT, SIGPOLL, SIGCLD) and
// `SIGRTMAX-<n>`; nullopt for anything else.
std::optional<int> SignalNumber(const std::string& name);

}  // namespace mos
