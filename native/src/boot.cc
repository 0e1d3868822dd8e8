// The syscalls PID 1 needs to boot and shut down a machine: finit_module, signal watches for any
// signal number (realtime ones included, which Node's process.on cannot take), the
// ctrl-alt-del switch, CLOCK_BOOTTIME, mknod, sync and kill(-1). No policy: which module, which
// signal means what, and when to kill everything are decided in init/boot/.
//
// Signal watch lifetime: a SignalWatch lives from watchSignal until libuv's close callback after
// close() (or after the environment's teardown hook closed it). The JS handle's `close` function
// reaches it through a Holder that the JS object owns; the watch and the holder null out each
// other's pointer when either goes away first, so a late close() or a late GC is harmless.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include <v8.h>

#include <string>
#include <unordered_set>

#include "addon.h"
#include "args.h"
#include "errors.h"
#include "reap.h"
#include "signals.h"

#ifndef MODULE_INIT_COMPRESSED_FILE
#define MODULE_INIT_COMPRESSED_FILE 4  // linux/module.h, kernels >= 5.17
#endif

namespace mos {
namespace {

// ── thread-pool syscalls ───────────────────────────────────────────────────────────────────

// One blocking step off the main thread; settles a promise with a NativeError naming the
// syscall that failed and the subject.
class BlockingWorker : public Napi::AsyncWorker {
 public:
  BlockingWorker(Napi::Env env, const char* name, std::string subject)
      : Napi::AsyncWorker(env, name),
        deferred_(Napi::Promise::Deferred::New(env)),
        subject_(std::move(subject)) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  // Worker thread: set failedSyscall_/error_ on failure.
  virtual void Run() = 0;
  void Fail(const char* syscall, int error) {
    failedSyscall_ = syscall;
    error_ = error;
  }
  const std::string& Subject() const { return subject_; }

 private:
  void Execute() override { Run(); }

  void OnOK() override {
    if (error_ == 0) {
      deferred_.Resolve(Env().Undefined());
    } else {
      deferred_.Reject(
          NativeError(Env(), failedSyscall_, error_, subject_.empty() ? nullptr : subject_.c_str())
              .Value());
    }
  }

  Napi::Promise::Deferred deferred_;
  std::string subject_;
  const char* failedSyscall_ = "";
  int error_ = 0;
};

class LoadModuleWorker : public BlockingWorker {
 public:
  LoadModuleWorker(Napi::Env env, std::string path, std::string params, bool compressed)
      : BlockingWorker(env, "finit_module", std::move(path)),
        params_(std::move(params)),
        compressed_(compressed) {}

 private:
  void Run() override {
    int fd = open(Subject().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Fail("open", errno);
    int flags = compressed_ ? MODULE_INIT_COMPRESSED_FILE : 0;
    long result = syscall(SYS_finit_module, fd, params_.c_str(), flags);
    int error = result == 0 ? 0 : errno;
    close(fd);
    if (error != 0) Fail("finit_module", error);
  }

  std::string params_;
  bool compressed_;
};

class SyncWorker : public BlockingWorker {
 public:
  explicit SyncWorker(Napi::Env env) : BlockingWorker(env, "sync", "") {}

 private:
  void Run() override { sync(); }
};

Napi::Value LoadModule(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = RequireString(info[0], "path");
  std::string params = IsAbsent(info[1]) ? std::string() : RequireString(info[1], "params");
  bool compressed = false;
  if (!IsAbsent(info[2])) {
    Napi::Object options = RequireObject(info[2], "options");
    Napi::Value value = options.Get("compressed");
    if (!IsAbsent(value)) {
      if (!value.IsBoolean()) ThrowTypeError(env, "options.compressed must be a boolean");
      compressed = value.As<Napi::Boolean>().Value();
    }
  }
  auto* worker = new LoadModuleWorker(env, std::move(path), std::move(params), compressed);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value Sync(const Napi::CallbackInfo& info) {
  auto* worker = new SyncWorker(info.Env());
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// ── signal watches ─────────────────────────────────────────────────────────────────────────

struct SignalWatch;

struct SignalRegistry {
  std::unordered_set<SignalWatch*> open;
  size_t pendingCloses = 0;
  bool tearingDown = false;
  napi_async_cleanup_hook_handle cleanupHook = nullptr;
};

// Owned by the JS handle object (freed by its finalizer).
struct Holder {
  SignalWatch* watch;
};

struct SignalWatch {
  uv_signal_t handle;
  int signum;
  napi_env env;
  SignalRegistry* registry;
  Holder* holder;
  Napi::FunctionReference onSignal;
  // watchChildren: reap (and run armed respawns) before any JavaScript, then hand over the exits.
  bool reapFirst = false;
};

void FinishSignalTeardownIfDone(SignalRegistry* registry) {
  if (!registry->tearingDown || registry->pendingCloses > 0) return;
  napi_remove_async_cleanup_hook(registry->cleanupHook);
  delete registry;
}

void OnSignalHandleClosed(uv_handle_t* handle) {
  auto* watch = static_cast<SignalWatch*>(handle->data);
  SignalRegistry* registry = watch->registry;
  delete watch;
  registry->pendingCloses--;
  FinishSignalTeardownIfDone(registry);
}

void CloseSignalWatch(SignalWatch* watch) {
  if (watch->holder != nullptr) watch->holder->watch = nullptr;
  watch->holder = nullptr;
  SignalRegistry* registry = watch->registry;
  registry->open.erase(watch);
  registry->pendingCloses++;
  // Stopping the last handle of a signal makes libuv restore the default disposition.
  uv_signal_stop(&watch->handle);
  watch->onSignal.Reset();
  uv_close(reinterpret_cast<uv_handle_t*>(&watch->handle), OnSignalHandleClosed);
}

void OnSignalTeardown(napi_async_cleanup_hook_handle hook, void* data) {
  auto* registry = static_cast<SignalRegistry*>(data);
  registry->tearingDown = true;
  registry->cleanupHook = hook;
  std::unordered_set<SignalWatch*> stillOpen = registry->open;
  for (SignalWatch* watch : stillOpen) CloseSignalWatch(watch);
  FinishSignalTeardownIfDone(registry);
}

void OnSignal(uv_signal_t* handle, int signum) {
  auto* watch = static_cast<SignalWatch*>(handle->data);
  std::vector<ExitRecord> exits;
  int failure = 0;
  if (watch->reapFirst) {
    failure = ReapExits(&exits);
    if (exits.empty() && failure == 0) return;  // nothing exited (several SIGCHLDs, one reap)
  }
  Napi::Env env(watch->env);
  Napi::HandleScope scope(env);
  try {
    if (watch->reapFirst) {
      Napi::Value error = failure == 0 ? env.Null() : NativeError(env, "waitpid", failure).Value();
      watch->onSignal.MakeCallback(env.Global(), {ExitsToJs(env, exits), error});
      return;
    }
    watch->onSignal.MakeCallback(env.Global(), {Napi::Number::New(env, signum)});
  } catch (const Napi::Error& error) {
    // The callback must not throw (types.ts); if it does, surface it as an uncaughtException.
    napi_fatal_exception(env, error.Value());
  }
}

Napi::Value CloseSignalHandle(const Napi::CallbackInfo& info) {
  auto* holder = static_cast<Holder*>(info.Data());
  if (holder->watch != nullptr) CloseSignalWatch(holder->watch);
  return info.Env().Undefined();
}

void FinalizeHolder(Napi::Env env, Holder* holder) {
  if (holder->watch != nullptr) holder->watch->holder = nullptr;
  delete holder;
}

Napi::Value StartSignalWatch(const Napi::CallbackInfo& info, int signum, Napi::Value callback,
                             bool reapFirst) {
  Napi::Env env = info.Env();
  auto* registry = static_cast<SignalRegistry*>(info.Data());

  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) {
    throw Napi::Error::New(env, "watchSignal: no event loop");
  }
  auto* watch = new SignalWatch();
  watch->signum = signum;
  watch->env = env;
  watch->registry = registry;
  watch->holder = nullptr;
  watch->reapFirst = reapFirst;
  int result = uv_signal_init(loop, &watch->handle);
  if (result != 0) {
    delete watch;
    ThrowNativeError(env, "uv_signal_init", -result);
  }
  watch->handle.data = watch;
  watch->onSignal = Napi::Persistent(callback.As<Napi::Function>());
  registry->open.insert(watch);
  result = uv_signal_start(&watch->handle, OnSignal, signum);
  if (result != 0) {
    CloseSignalWatch(watch);
    ThrowNativeError(env, "uv_signal_start", -result, SignalName(signum).c_str());
  }

  auto* holder = new Holder{watch};
  watch->holder = holder;
  Napi::Object handle = Napi::Object::New(env);
  handle.Set("signum", Napi::Number::New(env, signum));
  handle.Set("close", Napi::Function::New(env, CloseSignalHandle, "close", holder));
  handle.AddFinalizer(FinalizeHolder, holder);
  return handle;
}

Napi::Value WatchSignal(const Napi::CallbackInfo& info) {
  int signum = static_cast<int>(RequireInteger(info[0], "signum", 1, _NSIG - 1));
  if (!info[1].IsFunction()) ThrowTypeError(info.Env(), "onSignal must be a function");
  return StartSignalWatch(info, signum, info[1], false);
}

// watchChildren(onExits): SIGCHLD, reaped in C (armed respawns included) before the callback.
Napi::Value WatchChildren(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) ThrowTypeError(info.Env(), "onExits must be a function");
  return StartSignalWatch(info, SIGCHLD, info[0], true);
}

// ── plain syscalls ─────────────────────────────────────────────────────────────────────────

Napi::Value SetCtrlAltDelSignal(const Napi::CallbackInfo& info) {
  // LINUX_REBOOT_CMD_CAD_OFF: ctrl-alt-del sends SIGINT to PID 1 instead of rebooting at once.
  if (reboot(RB_DISABLE_CAD) != 0) ThrowNativeError(info.Env(), "reboot", errno, "CAD_OFF");
  return info.Env().Undefined();
}

Napi::Value BootTimeMs(const Napi::CallbackInfo& info) {
  struct timespec now;
  if (clock_gettime(CLOCK_BOOTTIME, &now) != 0) {
    ThrowNativeError(info.Env(), "clock_gettime", errno, "CLOCK_BOOTTIME");
  }
  double ms = static_cast<double>(now.tv_sec) * 1000.0 + static_cast<double>(now.tv_nsec) / 1e6;
  return Napi::Number::New(info.Env(), ms);
}

Napi::Value Mknod(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = RequireString(info[0], "path");
  auto mode = static_cast<mode_t>(RequireInteger(info[1], "mode", 0, 0177777));
  auto major = static_cast<unsigned int>(RequireInteger(info[2], "major", 0, 0xfff));
  auto minor = static_cast<unsigned int>(RequireInteger(info[3], "minor", 0, 0xfffff));
  if (mknod(path.c_str(), mode, makedev(major, minor)) != 0) {
    ThrowNativeError(env, "mknod", errno, path.c_str());
  }
  return env.Undefined();
}

// The root filesystem as a bind mount of itself, stacked on it: bind / (recursively) onto an
// empty directory, move that mount onto /, chroot into it. The initramfs (rootfs) cannot be
// pivot_root'ed away from (EINVAL: the root mount has no parent); a mount stacked on it can, so
// containers pivot into their rootfs and drop every other mount of the machine.
Napi::Value RootOntoBindMount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string dir = RequireString(info[0], "dir");
  if (mount("/", dir.c_str(), nullptr, MS_BIND | MS_REC, nullptr) != 0) {
    ThrowNativeError(env, "mount", errno, dir.c_str());
  }
  if (chdir(dir.c_str()) != 0) ThrowNativeError(env, "chdir", errno, dir.c_str());
  if (mount(".", "/", nullptr, MS_MOVE, nullptr) != 0) ThrowNativeError(env, "mount", errno, "/ (move)");
  if (chroot(".") != 0) ThrowNativeError(env, "chroot", errno, ".");
  if (chdir("/") != 0) ThrowNativeError(env, "chdir", errno, "/");
  return env.Undefined();
}

Napi::Value KillAll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = RequireString(info[0], "signal");
  std::optional<int> number = SignalNumber(name);
  if (!number) ThrowTypeError(env, "killAll: unknown signal " + name);
  // kill(-1): every process we may signal except ourselves (and, in PID 1, nothing is spared).
  if (kill(-1, *number) == 0) return Napi::Boolean::New(env, true);
  if (errno == ESRCH) return Napi::Boolean::New(env, false);
  ThrowNativeError(env, "kill", errno, "-1");
}

Napi::Value SignalNumberOf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = RequireString(info[0], "name");
  std::optional<int> number = SignalNumber(name);
  if (!number) ThrowTypeError(env, "signalNumber: unknown signal " + name);
  return Napi::Number::New(env, *number);
}

// V8 flags at run time (what node's `v8.setFlagsFromString` does, without loading the v8
// module and its heap-snapshot, serializer and profiler bindings into PID 1).
Napi::Value SetV8Flags(const Napi::CallbackInfo& info) {
  std::string flags = RequireString(info[0], "flags");
  v8::V8::SetFlagsFromString(flags.c_str(), flags.size());
  return info.Env().Undefined();
}

}  // namespace

void RegisterBoot(Napi::Env env, Napi::Object exports) {
  auto* registry = new SignalRegistry();
  if (napi_add_async_cleanup_hook(env, OnSignalTeardown, registry, nullptr) != napi_ok) {
    delete registry;
    throw Napi::Error::New(env, "mos_native: cannot add a cleanup hook");
  }
  exports.Set("loadModule", Napi::Function::New(env, LoadModule, "loadModule"));
  exports.Set("sync", Napi::Function::New(env, Sync, "sync"));
  exports.Set("watchSignal", Napi::Function::New(env, WatchSignal, "watchSignal", registry));
  exports.Set("watchChildren", Napi::Function::New(env, WatchChildren, "watchChildren", registry));
  exports.Set("setCtrlAltDelSignal",
              Napi::Function::New(env, SetCtrlAltDelSignal, "setCtrlAltDelSignal"));
  exports.Set("bootTimeMs", Napi::Function::New(env, BootTimeMs, "bootTimeMs"));
  exports.Set("mknod", Napi::Function::New(env, Mknod, "mknod"));
  exports.Set("killAll", Napi::Function::New(env, KillAll, "killAll"));
  exports.Set("rootOntoBindMount", Napi::Function::New(env, RootOntoBindMount, "rootOntoBindMount"));
  exports.Set("signalNumber", Napi::Function::New(env, SignalNumberOf, "signalNumber"));
  exports.Set("setV8Flags", Napi::Function::New(env, SetV8Flags, "setV8Flags"));
}

}  // namespace mos
