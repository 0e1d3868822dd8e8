// Idmapped bind mounts: a detached copy of the mount at a source path, idmapped through a
// temporary user namespace and attached at a target directory (open_tree, mount_setattr,
// move_mount; kernels >= 5.12, and the filesystem must allow it: ext4 5.12, squashfs 6.2,
// tmpfs 6.3, overlayfs never so far). docs/idmapped-mounts.md has what each kernel allows.
// Which image, which range and what to do when the kernel refuses is decided in TypeScript.
//
// The user namespace holding the mapping. unshare(CLONE_NEWUSER) is refused in a multithreaded
// process (Node), so a child is cloned into a new one and holds it while we write its uid_map
// and gid_map and open /proc/<pid>/ns/user; then the child is killed and reaped. The mount keeps
// its own reference to the namespace, so nothing of the child outlives this call.
//
// The child and the reaper (reap.cc: waitpid(-1, WNOHANG), no __WALL/__WCLONE, on SIGCHLD):
//  - its exit signal is 0, which makes it a "clone" child: waits without __WCLONE or __WALL never
//    consider it, so the reaper can neither collect it (and lose its status for us) nor report an
//    exit mos never spawned; and its exit raises no SIGCHLD at all;
//  - we reap it ourselves with waitpid(pid, __WCLONE) on every path once clone succeeded. Until
//    then it stays our unreaped child (a zombie at worst), so its pid cannot be reused under us.
//
// The child shares our memory (CLONE_VM, like spawn.cc's; no copy of Node's page tables) and runs
// on its own stack with every signal blocked, so no handler of ours ever runs in it. It only
// closes its copy of the pipe's write end and blocks reading the pipe, through raw syscall()s,
// none of which can fail there (so it never writes errno, which is our thread's). Release is
// SIGKILL, which needs nothing of the child; the pipe is for the case where this process dies
// first: EOF then ends the child. For that EOF to come, no other child may hold a copy of the
// write end, so helpers are made one at a time (a mutex around pipe, clone and reap).
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <utility>

#include "addon.h"
#include "args.h"
#include "errors.h"
#include "scoped-fd.h"

// The new mount API's numbers are the same on every architecture (x86_64 and aarch64 included).
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif

namespace mos {
namespace {

// <linux/mount.h> (which clashes with glibc's <sys/mount.h>, hence our own names).
constexpr unsigned int kOpenTreeClone = 1;            // OPEN_TREE_CLONE
constexpr unsigned int kOpenTreeCloexec = O_CLOEXEC;  // OPEN_TREE_CLOEXEC
constexpr unsigned int kMoveMountFromEmptyPath = 4;   // MOVE_MOUNT_F_EMPTY_PATH
constexpr uint64_t kMountAttrRdonly = 0x1;            // MOUNT_ATTR_RDONLY
constexpr uint64_t kMountAttrNosuid = 0x2;            // MOUNT_ATTR_NOSUID
constexpr uint64_t kMountAttrNodev = 0x4;             // MOUNT_ATTR_NODEV
constexpr uint64_t kMountAttrIdmap = 0x100000;        // MOUNT_ATTR_IDMAP

// struct mount_attr, MOUNT_ATTR_SIZE_VER0.
struct MountAttr {
  uint64_t attrSet;
  uint64_t attrClr;
  uint64_t propagation;
  uint64_t usernsFd;
};
static_assert(sizeof(MountAttr) == 32, "struct mount_attr is 32 bytes (MOUNT_ATTR_SIZE_VER0)");

// The helper child's stack: it runs a read loop, a page would do. The lowest page is a guard.
constexpr size_t kHelperStackBytes = 64 * 1024;
// The kernel's sigset_t (rt_sigprocmask takes its size, not glibc's 128-byte one).
constexpr size_t kKernelSigsetBytes = _NSIG / 8;
// A uid or gid of (uint32_t)-1 is "no id": the last host id must stay below it.
constexpr int64_t kIdLimit = 4294967295;

struct Failure {
  const char* step = "";
  int error = 0;
  std::string subject;

  bool Set(const char* failedStep, int failedError, std::string failedSubject) {
    step = failedStep;
    error = failedError;
    subject = std::move(failedSubject);
    return false;
  }
};

// ── the user namespace ────────────────────────────────────────────────────────────────────

// Serializes helpers (see the top of the file) and guards the one helper stack.
std::mutex& HelperMutex() {
  static std::mutex mutex;
  return mutex;
}

// The helper stack's top, mapped on first use and reused while helpers are reaped cleanly.
char* helperStackTop = nullptr;

char* HelperStackTop() {
  if (helperStackTop != nullptr) return helperStackTop;
  size_t pageBytes = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size_t mappingBytes = kHelperStackBytes + pageBytes;
  void* stack = mmap(nullptr, mappingBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) return nullptr;
  mprotect(stack, pageBytes, PROT_NONE);
  helperStackTop = static_cast<char*>(stack) + mappingBytes;
  return helperStackTop;
}

struct HelperPipe {
  int readFd;
  int writeFd;
};

// The child: runs in the new user namespace until killed, or until every write end is closed.
int HoldUserNamespace(void* arg) {
  const auto* pipe = static_cast<const HelperPipe*>(arg);
  syscall(SYS_close, pipe->writeFd);
  char byte;
  while (syscall(SYS_read, pipe->readFd, &byte, 1) > 0) {
  }
  return 0;  // glibc's clone() then calls exit(0)
}

// Writes the whole map in one write(2), as the kernel requires ("0 <hostId> <size>\n").
bool WriteIdMap(pid_t pid, const char* file, const std::string& map, Failure* failure) {
  std::string path = "/proc/" + std::to_string(pid) + "/" + file;
  ScopedFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd.IsOpen()) return failure->Set("open", errno, path);
  ssize_t written = write(fd.Get(), map.data(), map.size());
  if (written < 0) return failure->Set("write", errno, path);
  if (static_cast<size_t>(written) != map.size()) return failure->Set("write", EIO, path);
  return true;
}

// An fd of a new user namespace in which container ids 0..size-1 are host ids hostId.., for
// both uids and gids. False with `failure` set when a step fails; the helper is reaped either way.
bool OpenMappedUserNamespace(int64_t hostId, int64_t size, ScopedFd* userns, Failure* failure) {
  std::lock_guard<std::mutex> lock(HelperMutex());

  char* stackTop = HelperStackTop();
  if (stackTop == nullptr) return failure->Set("mmap", errno, "");
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return failure->Set("pipe2", errno, "");
  ScopedFd readEnd(fds[0]);
  ScopedFd writeEnd(fds[1]);
  HelperPipe pipe{fds[0], fds[1]};  // read by the child: lives until it is reaped

  // Every signal blocked in the child from its first instruction (glibc's internal ones too,
  // hence the raw syscall): no handler of ours may run on its stack.
  sigset_t everySignal;
  sigset_t previousMask;
  memset(&everySignal, 0xff, sizeof everySignal);
  sigemptyset(&previousMask);
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &everySignal, &previousMask, kKernelSigsetBytes);
  // No exit signal in the flags (0): a clone child, invisible to the reaper's waits.
  pid_t pid = clone(HoldUserNamespace, stackTop, CLONE_VM | CLONE_NEWUSER, &pipe);
  int cloneErrno = errno;
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &previousMask, nullptr, kKernelSigsetBytes);
  if (pid < 0) return failure->Set("clone", cloneErrno, "");

  // PID 1 has CAP_SETUID and CAP_SETGID in the parent namespace: gid_map needs no setgroups
  // "deny" first, and the range may be any host ids.
  std::string map = "0 " + std::to_string(hostId) + " " + std::to_string(size) + "\n";
  bool ok = WriteIdMap(pid, "uid_map", map, failure) && WriteIdMap(pid, "gid_map", map, failure);
  if (ok) {
    std::string path = "/proc/" + std::to_string(pid) + "/ns/user";
    userns->Reset(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!userns->IsOpen()) ok = failure->Set("open", errno, path);
  }

  // Release: on every path from here. SIGKILL works whatever the child is doing (even stopped);
  // our write end goes too, as it would if we died.
  writeEnd.Reset(-1);
  kill(pid, SIGKILL);
  for (;;) {
    int status = 0;
    if (waitpid(pid, &status, __WCLONE) == pid) break;
    if (errno == EINTR) continue;
    // Cannot happen for our own unreaped child; if it did, the child might still be on the
    // stack: leave that stack to it and map a new one next time.
    helperStackTop = nullptr;
    if (ok) ok = failure->Set("waitpid", errno, std::to_string(pid));
    break;
  }
  if (!ok) userns->Reset(-1);
  return ok;
}

// ── the mount ─────────────────────────────────────────────────────────────────────────────

struct IdmappedBindRequest {
  std::string source;
  std::string target;
  int64_t hostId = 0;
  int64_t size = 0;
  bool readOnly = false;
};

class IdmappedBindWorker : public Napi::AsyncWorker {
 public:
  IdmappedBindWorker(Napi::Env env, IdmappedBindRequest request)
      : Napi::AsyncWorker(env, "idmappedBind"),
        deferred_(Napi::Promise::Deferred::New(env)),
        request_(std::move(request)) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

 private:
  void Execute() override { Run(); }

  // Worker thread. The copy of the mount stays detached (owned by `tree`) until move_mount
  // attaches it, the last step: a failure before that dissolves it when `tree` is closed, so no
  // half-made mount is ever left.
  void Run() {
    // The source first: a missing one costs no child.
    ScopedFd tree(static_cast<int>(syscall(SYS_open_tree, AT_FDCWD, request_.source.c_str(),
                                           kOpenTreeClone | kOpenTreeCloexec)));
    if (!tree.IsOpen()) return Fail("open_tree", errno, request_.source);

    ScopedFd userns;
    if (!OpenMappedUserNamespace(request_.hostId, request_.size, &userns, &failure_)) return;

    MountAttr attr{};
    attr.attrSet = kMountAttrIdmap | kMountAttrNosuid | kMountAttrNodev |
                   (request_.readOnly ? kMountAttrRdonly : 0);
    attr.usernsFd = static_cast<uint64_t>(userns.Get());
    if (syscall(SYS_mount_setattr, tree.Get(), "", AT_EMPTY_PATH, &attr, sizeof attr) != 0) {
      return Fail("mount_setattr", errno, request_.source);
    }
    if (syscall(SYS_move_mount, tree.Get(), "", AT_FDCWD, request_.target.c_str(),
                kMoveMountFromEmptyPath) != 0) {
      return Fail("move_mount", errno, request_.target);
    }
  }

  void Fail(const char* step, int error, const std::string& subject) {
    failure_.Set(step, error, subject);
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (failure_.error == 0) {
      deferred_.Resolve(env.Undefined());
      return;
    }
    const char* subject = failure_.subject.empty() ? nullptr : failure_.subject.c_str();
    deferred_.Reject(NativeError(env, failure_.step, failure_.error, subject).Value());
  }

  Napi::Promise::Deferred deferred_;
  IdmappedBindRequest request_;
  Failure failure_;
};

template <typename Worker, typename... Args>
Napi::Value QueueWorker(Napi::Env env, Args&&... args) {
  auto* worker = new Worker(env, std::forward<Args>(args)...);
  Napi::Promise promise = worker->Promise();
  worker->Queue();  // the worker deletes itself after OnOK
  return promise;
}

std::string RequirePath(Napi::Value value, const char* what) {
  std::string path = RequireString(value, what);
  if (path.empty()) ThrowTypeError(value.Env(), std::string(what) + " must not be empty");
  return path;
}

// idmappedBind({ source, target, hostId, size, readOnly }): Promise<void>.
Napi::Value IdmappedBind(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object options = RequireObject(info[0], "options");
  IdmappedBindRequest request;
  request.source = RequirePath(options.Get("source"), "options.source");
  request.target = RequirePath(options.Get("target"), "options.target");
  request.hostId = RequireInteger(options.Get("hostId"), "options.hostId", 0, kIdLimit - 1);
  request.size = RequireInteger(options.Get("size"), "options.size", 1, kIdLimit);
  if (request.hostId + request.size > kIdLimit) {
    ThrowTypeError(env,
                   "options.hostId + options.size must not exceed " + std::to_string(kIdLimit));
  }
  request.readOnly = RequireBoolean(options.Get("readOnly"), "options.readOnly");
  return QueueWorker<IdmappedBindWorker>(env, std::move(request));
}

}  // namespace

void RegisterIdmap(Napi::Env env, Napi::Object exports) {
  exports.Set("idmappedBind", Napi::Function::New(env, IdmappedBind, "idmappedBind"));
}

}  // namespace mos
