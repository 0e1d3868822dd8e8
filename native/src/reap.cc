// Reaping (the one place that waits), kill, and the subreaper flag.
#include <errno.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "addon.h"
#include "args.h"
#include "errors.h"
#include "signals.h"

namespace mos {
namespace {

Napi::Value Reap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array exits = Napi::Array::New(env);
  uint32_t count = 0;
  for (;;) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid == 0) break;  // children left, none exited
    if (pid < 0) {
      if (errno == EINTR) continue;
      if (errno == ECHILD) break;  // no children at all
      // Exits already collected must not be lost: report them now, the error comes next call.
      if (count > 0) break;
      ThrowNativeError(env, "waitpid", errno);
    }
    // Stops and continues come only with WUNTRACED/WCONTINUED or to a tracer: not exits.
    if (!WIFEXITED(status) && !WIFSIGNALED(status)) continue;
    Napi::Object exit = Napi::Object::New(env);
    exit.Set("pid", Napi::Number::New(env, pid));
    if (WIFEXITED(status)) {
      exit.Set("code", Napi::Number::New(env, WEXITSTATUS(status)));
      exit.Set("signal", env.Null());
      exit.Set("core", Napi::Boolean::New(env, false));
    } else {
      exit.Set("code", env.Null());
      exit.Set("signal", Napi::String::New(env, SignalName(WTERMSIG(status))));
      exit.Set("core", Napi::Boolean::New(env, WCOREDUMP(status) != 0));
    }
    exits.Set(count++, exit);
  }
  return exits;
}

int RequireSignal(Napi::Value value, const char* caller) {
  std::string name = RequireString(value, "signal");
  std::optional<int> number = SignalNumber(name);
  if (!number) ThrowTypeError(value.Env(), std::string(caller) + ": unknown signal " + name);
  return *number;
}

// kill(target, signal): true when delivered, false on ESRCH, throws otherwise.
bool SendSignal(Napi::Env env, pid_t target, int signal) {
  if (kill(target, signal) == 0) return true;
  if (errno == ESRCH) return false;
  ThrowNativeError(env, "kill", errno);
}

Napi::Value Kill(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  // pid 0 and negative pids address groups or everything: never by accident through this call.
  pid_t pid = static_cast<pid_t>(RequireInteger(info[0], "pid", 1, INT32_MAX));
  int signal = RequireSignal(info[1], "kill");
  return Napi::Boolean::New(env, SendSignal(env, pid, signal));
}

Napi::Value KillProcessGroup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  // kill(-1) would signal every process we may signal, not group 1, so pgid 1 is refused.
  pid_t pgid = static_cast<pid_t>(RequireInteger(info[0], "pgid", 2, INT32_MAX));
  int signal = RequireSignal(info[1], "killProcessGroup");
  return Napi::Boolean::New(env, SendSignal(env, -pgid, signal));
}

Napi::Value SetChildSubreaper(const Napi::CallbackInfo& info) {
  if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
    ThrowNativeError(info.Env(), "prctl", errno);
  }
  return info.Env().Undefined();
}

}  // namespace

void RegisterReap(Napi::Env env, Napi::Object exports) {
  exports.Set("reap", Napi::Function::New(env, Reap, "reap"));
  exports.Set("kill", Napi::Function::New(env, Kill, "kill"));
  exports.Set("killProcessGroup", Napi::Function::New(env, KillProcessGroup, "killProcessGroup"));
  exports.Set("setChildSubreaper", Napi::Function::New(env, SetChildSubreaper, "setChildSubreaper"));
}

}  // namespace mos
