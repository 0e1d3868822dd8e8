// watchReadable: a libuv poll handle on Node's own event loop.
//
// Lifetime: a PollWatch lives from watchReadable until libuv's close callback after close().
// The JS handle object (ReadableWatchHandle) only points at it; closing is idempotent through
// the handle's own flag. At environment teardown (process exit, worker termination) an async
// cleanup hook closes whatever is still open, because libuv refuses to close a loop that still
// has handles and Node aborts on that for workers.
#include <uv.h>

#include <unordered_set>

#include "addon.h"
#include "args.h"
#include "errors.h"

namespace mos {
namespace {

struct PollWatch;

// Per environment: the open watches, and the closes libuv has not confirmed yet.
struct PollRegistry {
  std::unordered_set<PollWatch*> open;
  size_t pendingCloses = 0;
  bool tearingDown = false;
  napi_async_cleanup_hook_handle cleanupHook = nullptr;
};

struct PollWatch {
  uv_poll_t handle;
  int fd;
  napi_env env;
  PollRegistry* registry;
  Napi::FunctionReference onReadable;
};

// Once torn down, the registry is freed after the last close callback, and Node may finish.
void FinishTeardownIfDone(PollRegistry* registry) {
  if (!registry->tearingDown || registry->pendingCloses > 0) return;
  napi_remove_async_cleanup_hook(registry->cleanupHook);
  delete registry;
}

void OnHandleClosed(uv_handle_t* handle) {
  auto* watch = static_cast<PollWatch*>(handle->data);
  PollRegistry* registry = watch->registry;
  delete watch;
  registry->pendingCloses--;
  FinishTeardownIfDone(registry);
}

void CloseWatch(PollWatch* watch) {
  PollRegistry* registry = watch->registry;
  registry->open.erase(watch);
  registry->pendingCloses++;
  uv_poll_stop(&watch->handle);
  // Let go of the JS function now; during teardown references may no longer be touched later.
  watch->onReadable.Reset();
  uv_close(reinterpret_cast<uv_handle_t*>(&watch->handle), OnHandleClosed);
}

void OnEnvironmentTeardown(napi_async_cleanup_hook_handle hook, void* data) {
  auto* registry = static_cast<PollRegistry*>(data);
  registry->tearingDown = true;
  registry->cleanupHook = hook;
  // Copy: CloseWatch erases from the set.
  std::unordered_set<PollWatch*> stillOpen = registry->open;
  for (PollWatch* watch : stillOpen) CloseWatch(watch);
  FinishTeardownIfDone(registry);
}

void OnPollEvent(uv_poll_t* handle, int status, int events) {
  auto* watch = static_cast<PollWatch*>(handle->data);
  Napi::Env env(watch->env);
  Napi::HandleScope scope(env);
  // On a poll error (status < 0) libuv has stopped the handle already; the callback still runs
  // once so that the reader meets the error on its next read.
  try {
    // MakeCallback, not Call: it drains process.nextTick and promise jobs afterwards, as any
    // other I/O callback of Node does. No async context: this is a top-level I/O event.
    watch->onReadable.MakeCallback(env.Global(), {});
  } catch (const Napi::Error& error) {
    // types.ts says the callback must not throw; if it does, it is a bug to surface, as an
    // uncaughtException, never as a crash of the loop.
    napi_fatal_exception(env, error.Value());
  }
}

class ReadableWatchHandle : public Napi::ObjectWrap<ReadableWatchHandle> {
 public:
  static Napi::Function DefineClass(Napi::Env env) {
    return ObjectWrap::DefineClass(env, "ReadableWatch",
                                   {InstanceMethod<&ReadableWatchHandle::Close>("close")});
  }

  explicit ReadableWatchHandle(const Napi::CallbackInfo& info) : ObjectWrap(info) {
    if (info.Length() > 0 && info[0].IsExternal()) {
      watch_ = info[0].As<Napi::External<PollWatch>>().Data();
    }
  }

 private:
  Napi::Value Close(const Napi::CallbackInfo& info) {
    // After teardown no JS runs, so a watch closed by the cleanup hook is never closed here.
    if (watch_ != nullptr) {
      PollWatch* watch = watch_;
      watch_ = nullptr;
      CloseWatch(watch);
    }
    return info.Env().Undefined();
  }

  PollWatch* watch_ = nullptr;  // null once closed
};

struct PollAddonData {
  Napi::FunctionReference watchHandleClass;
  PollRegistry* registry;
};

Napi::Value WatchReadable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = RequireFd(info[0], "fd");
  if (!info[1].IsFunction()) ThrowTypeError(env, "onReadable must be a function");
  auto* addonData = env.GetInstanceData<PollAddonData>();

  // libuv supports one poll handle per fd: a second one would silently never fire.
  for (PollWatch* open : addonData->registry->open) {
    if (open->fd == fd) ThrowNativeError(env, "watchReadable", EEXIST);
  }

  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) {
    throw Napi::Error::New(env, "watchReadable: no event loop");
  }

  auto* watch = new PollWatch();
  watch->fd = fd;
  watch->env = env;
  watch->registry = addonData->registry;
  // Note: uv_poll_init puts the fd in non-blocking mode.
  int result = uv_poll_init(loop, &watch->handle, fd);
  if (result != 0) {
    // Not initialised, so nothing to uv_close.
    delete watch;
    ThrowNativeError(env, "uv_poll_init", -result);
  }
  watch->handle.data = watch;
  watch->onReadable = Napi::Persistent(info[1].As<Napi::Function>());
  addonData->registry->open.insert(watch);
  result = uv_poll_start(&watch->handle, UV_READABLE, OnPollEvent);
  if (result != 0) {
    CloseWatch(watch);
    ThrowNativeError(env, "uv_poll_start", -result);
  }

  return addonData->watchHandleClass.New({Napi::External<PollWatch>::New(env, watch)});
}

}  // namespace

void RegisterPoll(Napi::Env env, Napi::Object exports) {
  auto* registry = new PollRegistry();
  if (napi_add_async_cleanup_hook(env, OnEnvironmentTeardown, registry, nullptr) != napi_ok) {
    delete registry;
    throw Napi::Error::New(env, "mos_native: cannot add a cleanup hook");
  }
  // The registry outlives the instance data on purpose: close callbacks may still arrive after
  // the instance data is finalized, so the registry frees itself when teardown is complete.
  // The only user of the module's instance data; another area needing some must share this.
  auto* addonData = new PollAddonData{Napi::Persistent(ReadableWatchHandle::DefineClass(env)),
                                      registry};
  env.SetInstanceData<PollAddonData>(addonData);
  exports.Set("watchReadable", Napi::Function::New(env, WatchReadable, "watchReadable"));
}

}  // namespace mos
