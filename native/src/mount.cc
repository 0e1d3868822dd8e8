// mount/umount2 on libuv's thread pool (they can block for long: network filesystems, sync on
// unmount), and reboot.
#include <errno.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <unistd.h>

#include <string>

#include "addon.h"
#include "args.h"
#include "errors.h"

namespace mos {
namespace {

// Runs one syscall off the main thread and settles a promise with its outcome.
class SyscallWorker : public Napi::AsyncWorker {
 public:
  SyscallWorker(Napi::Env env, const char* syscall, std::string subject)
      : Napi::AsyncWorker(env, syscall),
        deferred_(Napi::Promise::Deferred::New(env)),
        syscall_(syscall),
        subject_(std::move(subject)) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  // Called on the worker thread: 0 or an errno.
  virtual int RunSyscall() = 0;

  const std::string& Subject() const { return subject_; }

 private:
  void Execute() override { error_ = RunSyscall(); }

  void OnOK() override {
    if (error_ == 0) {
      deferred_.Resolve(Env().Undefined());
    } else {
      deferred_.Reject(NativeError(Env(), syscall_, error_, subject_.c_str()).Value());
    }
  }

  Napi::Promise::Deferred deferred_;
  const char* syscall_;
  std::string subject_;
  int error_ = 0;
};

class MountWorker : public SyscallWorker {
 public:
  MountWorker(Napi::Env env, std::string source, std::string target, std::string fstype,
              unsigned long flags, bool hasData, std::string data)
      : SyscallWorker(env, "mount", target),
        source_(std::move(source)),
        fstype_(std::move(fstype)),
        flags_(flags),
        hasData_(hasData),
        data_(std::move(data)) {}

 private:
  int RunSyscall() override {
    int result = mount(source_.c_str(), Subject().c_str(), fstype_.c_str(), flags_,
                       hasData_ ? data_.c_str() : nullptr);
    return result == 0 ? 0 : errno;
  }

  std::string source_;
  std::string fstype_;
  unsigned long flags_;
  bool hasData_;
  std::string data_;
};

class UmountWorker : public SyscallWorker {
 public:
  UmountWorker(Napi::Env env, std::string target, int flags)
      : SyscallWorker(env, "umount2", std::move(target)), flags_(flags) {}

 private:
  int RunSyscall() override { return umount2(Subject().c_str(), flags_) == 0 ? 0 : errno; }

  int flags_;
};

Napi::Value Mount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object request = RequireObject(info[0], "request");
  std::string source = RequireString(request.Get("source"), "request.source");
  std::string target = RequireString(request.Get("target"), "request.target");
  std::string fstype = RequireString(request.Get("fstype"), "request.fstype");
  auto flags = static_cast<unsigned long>(
      RequireInteger(request.Get("flags"), "request.flags", 0, UINT32_MAX));
  Napi::Value dataValue = request.Get("data");
  bool hasData = !IsAbsent(dataValue);
  std::string data = hasData ? RequireString(dataValue, "request.data") : std::string();

  auto* worker = new MountWorker(env, std::move(source), std::move(target), std::move(fstype),
                                 flags, hasData, std::move(data));
  Napi::Promise promise = worker->Promise();
  worker->Queue();  // the worker deletes itself after OnOK
  return promise;
}

Napi::Value Umount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string target = RequireString(info[0], "target");
  int flags = static_cast<int>(RequireInteger(info[1], "flags", 0, INT32_MAX));
  auto* worker = new UmountWorker(env, std::move(target), flags);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value Reboot(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string command = RequireString(info[0], "command");
  int howto;
  if (command == "restart") {
    howto = RB_AUTOBOOT;
  } else if (command == "halt") {
    howto = RB_HALT_SYSTEM;
  } else if (command == "poweroff") {
    howto = RB_POWER_OFF;
  } else {
    ThrowTypeError(env, "reboot: unknown command " + command);
  }
  sync();
  reboot(howto);
  ThrowNativeError(env, "reboot", errno);
}

}  // namespace

void RegisterMount(Napi::Env env, Napi::Object exports) {
  exports.Set("mount", Napi::Function::New(env, Mount, "mount"));
  exports.Set("umount", Napi::Function::New(env, Umount, "umount"));
  exports.Set("reboot", Napi::Function::New(env, Reboot, "reboot"));
}

}  // namespace mos
