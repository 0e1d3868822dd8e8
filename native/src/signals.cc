#include "signals.h"

#include <signal.h>

#include <cstdlib>

namespace mos {
namespace {

struct NamedSignal {
  const char* name;
  int number;
};

// Canonical names first: SignalName returns the first match.
const NamedSignal kSignals[] = {
    {"SIGHUP", SIGHUP},       {"SIGINT", SIGINT},       {"SIGQUIT", SIGQUIT},
    {"SIGILL", SIGILL},       {"SIGTRAP", SIGTRAP},     {"SIGABRT", SIGABRT},
    {"SIGBUS", SIGBUS},       {"SIGFPE", SIGFPE},       {"SIGKILL", SIGKILL},
    {"SIGUSR1", SIGUSR1},     {"SIGSEGV", SIGSEGV},     {"SIGUSR2", SIGUSR2},
    {"SIGPIPE", SIGPIPE},     {"SIGALRM", SIGALRM},     {"SIGTERM", SIGTERM},
#ifdef SIGSTKFLT
    {"SIGSTKFLT", SIGSTKFLT},
#endif
    {"SIGCHLD", SIGCHLD},     {"SIGCONT", SIGCONT},     {"SIGSTOP", SIGSTOP},
    {"SIGTSTP", SIGTSTP},     {"SIGTTIN", SIGTTIN},     {"SIGTTOU", SIGTTOU},
    {"SIGURG", SIGURG},       {"SIGXCPU", SIGXCPU},     {"SIGXFSZ", SIGXFSZ},
    {"SIGVTALRM", SIGVTALRM}, {"SIGPROF", SIGPROF},     {"SIGWINCH", SIGWINCH},
    {"SIGIO", SIGIO},         {"SIGPWR", SIGPWR},       {"SIGSYS", SIGSYS},
    // Aliases, accepted by SignalNumber only.
    {"SIGIOT", SIGIOT},       {"SIGPOLL", SIGPOLL},     {"SIGCLD", SIGCHLD},
};

// "123" -> 123; nullopt unless the whole text is a small decimal number.
std::optional<int> ParseSmallNumber(const std::string& text) {
  if (text.empty() || text.size() > 3) return std::nullopt;
  int value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + (c - '0');
  }
  return value;
}

}  // namespace

std::string SignalName(int signal) {
  for (const NamedSignal& entry : kSignals) {
    if (entry.number == signal) return entry.name;
  }
  // SIGRTMIN is a runtime value: glibc reserves the first real-time signals for itself.
  if (signal == SIGRTMIN) return "SIGRTMIN";
  if (signal > SIGRTMIN && signal <= SIGRTMAX) return "SIGRTMIN+" + std::to_string(signal - SIGRTMIN);
  return "SIG" + std::to_string(signal);
}

std::optional<int> SignalNumber(const std::string& name) {
  for (const NamedSignal& entry : kSignals) {
    if (name == entry.name) return entry.number;
  }
  if (name == "SIGRTMIN") return SIGRTMIN;
  if (name == "SIGRTMAX") return SIGRTMAX;
  if (name.rfind("SIGRTMIN+", 0) == 0) {
    auto offset = ParseSmallNumber(name.substr(9));
    if (offset && SIGRTMIN + *offset <= SIGRTMAX) return SIGRTMIN + *offset;
    return std::nullopt;
  }
  if (name.rfind("SIGRTMAX-", 0) == 0) {
    auto offset = ParseSmallNumber(name.substr(9));
    if (offset && SIGRTMAX - *offset >= SIGRTMIN) return SIGRTMAX - *offset;
    return std::nullopt;
  }
  if (name.rfind("SIG", 0) == 0) {
    auto number = ParseSmallNumber(name.substr(3));
    if (number && *number >= 1 && *number < _NSIG) return *number;
  }
  return std::nullopt;
}

}  // namespace mos
