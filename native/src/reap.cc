// Reaping (the one place that waits), armed respawns, kill, and the subreaper flag.
//
// An armed respawn is a run decided in advance: the supervisor arms it for a pid while its
// policy says the next exit of that pid restarts the service at once, whatever the exit status
// (init/supervisor/machine.ts, respawnsWhateverItsExit). The reap that collects the pid clones
// the new run before returning to JavaScript, and reports it with the exit; the state machine
// then adopts it. No decision is made here: the plan runs if it is armed, never otherwise.
#include <errno.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <unordered_map>

#include "addon.h"
#include "args.h"
#include "errors.h"
#include "reap.h"
#include "signals.h"

namespace mos {
namespace {

// Armed respawns: pid -> the plan of the run that replaces it, parsed ahead of time. Per thread:
// the JS thread that armed them is the one whose reap and SIGCHLD watch run them.
struct ArmedRespawn {
  SpawnPlan plan;
  int readinessChildFd = -1;  // a fresh pipe's write end becomes this child fd
};

std::unordered_map<pid_t, std::unique_ptr<ArmedRespawn>>& Armed() {
  static thread_local std::unordered_map<pid_t, std::unique_ptr<ArmedRespawn>> armed;
  return armed;
}

void Respawn(ArmedRespawn* armed, ExitRecord* record) {
  record->respawned = true;
  int readiness[2] = {-1, -1};
  if (armed->readinessChildFd >= 0) {
    if (pipe2(readiness, O_CLOEXEC) != 0) {
      record->respawn.syscall = "pipe2";
      record->respawn.error = errno;
      return;
    }
    AddFdMapping(&armed->plan, armed->readinessChildFd, readiness[1]);
  }
  record->respawn = RunSpawnPlan(&armed->plan);
  if (record->respawn.subject != nullptr) {
    // The plan dies with this call; the error message outlives it.
    record->hasRespawnSubject = true;
    record->respawnSubject = record->respawn.subject;
    record->respawn.subject = nullptr;
  }
  if (readiness[1] >= 0) {
    // The child has its copy of the write end; ours would keep the pipe open past its exit.
    close(readiness[1]);
    if (record->respawn.error == 0) {
      record->readinessFd = readiness[0];
    } else {
      close(readiness[0]);
    }
  }
}

}  // namespace

int ReapExits(std::vector<ExitRecord>* exits) {
  bool respawned = false;
  int failure = 0;
  for (;;) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid == 0) break;  // children left, none exited
    if (pid < 0) {
      if (errno == EINTR) continue;
      if (errno != ECHILD) failure = errno;  // ECHILD: no children at all
      break;
    }
    // Stops and continues come only with WUNTRACED/WCONTINUED or to a tracer: not exits.
    if (!WIFEXITED(status) && !WIFSIGNALED(status)) continue;
    ExitRecord record;
    record.pid = pid;
    record.exited = WIFEXITED(status);
    record.code = record.exited ? WEXITSTATUS(status) : 0;
    record.signal = record.exited ? 0 : WTERMSIG(status);
    record.core = !record.exited && WCOREDUMP(status) != 0;
    auto armed = Armed().find(pid);
    if (armed != Armed().end()) {
      // The pid is gone for good: its plan runs once, now, before any JavaScript.
      std::unique_ptr<ArmedRespawn> plan = std::move(armed->second);
      Armed().erase(armed);
      Respawn(plan.get(), &record);
      respawned = respawned || record.respawn.pid > 0;
    }
    exits->push_back(record);
  }
  // A child that has just exec'd usually waits on this CPU behind us (the vfork wake-up put us
  // back on its CPU, ahead of it): let it run before the bookkeeping that follows.
  if (respawned) sched_yield();
  return failure;
}

Napi::Array ExitsToJs(Napi::Env env, const std::vector<ExitRecord>& exits) {
  Napi::Array array = Napi::Array::New(env, exits.size());
  for (uint32_t i = 0; i < exits.size(); i++) {
    const ExitRecord& record = exits[i];
    Napi::Object exit = Napi::Object::New(env);
    exit.Set("pid", Napi::Number::New(env, record.pid));
    if (record.exited) {
      exit.Set("code", Napi::Number::New(env, record.code));
      exit.Set("signal", env.Null());
    } else {
      exit.Set("code", env.Null());
      exit.Set("signal", Napi::String::New(env, SignalName(record.signal)));
    }
    exit.Set("core", Napi::Boolean::New(env, record.core));
    if (record.respawned) {
      Napi::Object respawn = Napi::Object::New(env);
      if (record.respawn.error == 0) {
        respawn.Set("pid", Napi::Number::New(env, record.respawn.pid));
        respawn.Set("readinessFd",
                    record.readinessFd >= 0 ? Napi::Value(Napi::Number::New(env, record.readinessFd))
                                            : Napi::Value(env.Null()));
      } else {
        Napi::Error error =
            NativeError(env, record.respawn.syscall, record.respawn.error,
                        record.hasRespawnSubject ? record.respawnSubject.c_str() : nullptr);
        if (record.respawn.pid > 0) error.Value().Set("pid", Napi::Number::New(env, record.respawn.pid));
        respawn.Set("error", error.Value());
      }
      exit.Set("respawn", respawn);
    }
    array.Set(i, exit);
  }
  return array;
}

namespace {

Napi::Value Reap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<ExitRecord> exits;
  int failure = ReapExits(&exits);
  // Exits already collected must not be lost: report them now, the error comes next call.
  if (failure != 0 && exits.empty()) ThrowNativeError(env, "waitpid", failure);
  return ExitsToJs(env, exits);
}

// armRespawn(pid, options, readinessChildFd?): when `pid` is reaped, run `options` at once.
Napi::Value ArmRespawn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t pid = static_cast<pid_t>(RequireInteger(info[0], "pid", 1, INT32_MAX));
  auto armed = std::make_unique<ArmedRespawn>();
  ParseSpawnOptions(env, info[1], &armed->plan);
  if (!IsAbsent(info[2])) {
    armed->readinessChildFd = RequireFd(info[2], "readinessChildFd");
    if (std::find(armed->plan.childFds.begin(), armed->plan.childFds.end(),
                  armed->readinessChildFd) != armed->plan.childFds.end()) {
      ThrowTypeError(env, "readinessChildFd " + std::to_string(armed->readinessChildFd) +
                              " is already mapped in options.fds");
    }
    armed->plan.scratchFdFloor = std::max(armed->plan.scratchFdFloor, armed->readinessChildFd + 1);
  }
  Armed()[pid] = std::move(armed);
  return env.Undefined();
}

Napi::Value DisarmRespawn(const Napi::CallbackInfo& info) {
  pid_t pid = static_cast<pid_t>(RequireInteger(info[0], "pid", 1, INT32_MAX));
  return Napi::Boolean::New(info.Env(), Armed().erase(pid) > 0);
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
  exports.Set("armRespawn", Napi::Function::New(env, ArmRespawn, "armRespawn"));
  exports.Set("disarmRespawn", Napi::Function::New(env, DisarmRespawn, "disarmRespawn"));
  exports.Set("kill", Napi::Function::New(env, Kill, "kill"));
  exports.Set("killProcessGroup", Napi::Function::New(env, KillProcessGroup, "killProcessGroup"));
  exports.Set("setChildSubreaper", Napi::Function::New(env, SetChildSubreaper, "setChildSubreaper"));
}

}  // namespace mos
