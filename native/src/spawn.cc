// spawn: clone(CLONE_VM | CLONE_VFORK) + execve, safe inside a multithreaded process (Node).
//
// Why not fork: copying the page tables of a large Node heap is slow, and a forked child of a
// multithreaded process may only call async-signal-safe functions anyway. Why not posix_spawn:
// it cannot start a session and set ids and map fds and fill in the child's own pid in one go.
//
// The child shares our memory and runs on its own small stack while the calling thread is
// suspended (CLONE_VFORK) until the child has exec'd or exited. Everything it needs is prepared
// here first; the child only makes syscalls and writes into that prepared memory: no malloc, no
// locks, no C++ exceptions, because other Node threads keep running meanwhile.
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "addon.h"
#include "args.h"
#include "errors.h"
#include "spawn.h"

#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

// 32-bit ABIs have 16-bit legacy id syscalls; the *32 variants take full ids.
#ifdef SYS_setgroups32
#define MOS_SYS_setgroups SYS_setgroups32
#define MOS_SYS_setresgid SYS_setresgid32
#define MOS_SYS_setresuid SYS_setresuid32
#else
#define MOS_SYS_setgroups SYS_setgroups
#define MOS_SYS_setresgid SYS_setresgid
#define MOS_SYS_setresuid SYS_setresuid
#endif

namespace mos {
namespace {

// The kernel's sigset_t is _NSIG bits; glibc's is larger. Raw rt_sigprocmask needs the kernel's.
constexpr size_t kKernelSigsetBytes = _NSIG / 8;

// The child only makes syscalls; the largest frame is the /proc/self/fd listing buffer.
constexpr size_t kChildStackBytes = 64 * 1024;

// Room for any pid in decimal (pid_max is at most 2^22) and then some.
constexpr size_t kPidDigitsRoom = 20;

enum SpawnStage : int {
  kStageNone = 0,
  kStageSetsid,
  kStageDup2,
  kStageChroot,
  kStageChdir,
  kStageSetgroups,
  kStageSetgid,
  kStageSetuid,
  kStageExecve,
};

const char* StageName(int stage) {
  switch (stage) {
    case kStageSetsid: return "setsid";
    case kStageDup2: return "dup2";
    case kStageChroot: return "chroot";
    case kStageChdir: return "chdir";
    case kStageSetgroups: return "setgroups";
    case kStageSetgid: return "setgid";
    case kStageSetuid: return "setuid";
    case kStageExecve: return "execve";
    default: return "clone";
  }
}

// ---- child side: async-signal-safe only ------------------------------------------------------

[[noreturn]] void FailInChild(SpawnPlan* plan, SpawnStage stage) {
  plan->failedErrno = errno;
  plan->failedStage = stage;
  _exit(127);
}

// Exec keeps ignored signals ignored (Node ignores SIGPIPE) and our caught ones would run Node's
// handlers on the child's stack in our memory if one arrived before exec. So: all to SIG_DFL.
// glibc refuses its two internal signals (32, 33) with EINVAL; they are only ever sent to our
// own threads with tgkill, never to the child, and exec resets caught signals anyway.
void ResetSignalDispositions() {
  struct sigaction defaultAction;
  memset(&defaultAction, 0, sizeof defaultAction);
  defaultAction.sa_handler = SIG_DFL;
  for (int signal = 1; signal < _NSIG; signal++) {
    if (signal == SIGKILL || signal == SIGSTOP) continue;
    sigaction(signal, &defaultAction, nullptr);
  }
}

struct LinuxDirent64 {
  uint64_t d_ino;
  int64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[];
};

// Fallback for kernels without close_range(CLOSE_RANGE_CLOEXEC) (before 5.11): walk our fd table.
bool MarkAllCloseOnExecFromProc() {
  int directory = static_cast<int>(
      syscall(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (directory < 0) return false;
  alignas(8) char buffer[4096];
  for (;;) {
    long length = syscall(SYS_getdents64, directory, buffer, sizeof buffer);
    if (length < 0) {
      int saved = errno;
      close(directory);
      errno = saved;
      return false;
    }
    if (length == 0) break;
    for (long offset = 0; offset < length;) {
      auto* entry = reinterpret_cast<LinuxDirent64*>(buffer + offset);
      offset += entry->d_reclen;
      int fd = 0;
      bool numeric = entry->d_name[0] != '\0';
      for (const char* c = entry->d_name; *c != '\0'; c++) {
        if (*c < '0' || *c > '9') {
          numeric = false;
          break;
        }
        fd = fd * 10 + (*c - '0');
      }
      if (numeric && fd != directory) fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
  }
  close(directory);
  return true;
}

// Only mapped fds survive exec. Parking every parent fd above all targets first makes any map
// safe, including swaps (0<-1, 1<-0) and a parent fd that is another mapping's target.
bool ApplyFdMap(SpawnPlan* plan) {
  size_t count = plan->childFds.size();
  for (size_t i = 0; i < count; i++) {
    int parked = fcntl(plan->parentFds[i], F_DUPFD_CLOEXEC, plan->scratchFdFloor);
    if (parked < 0) return false;
    plan->scratchFds[i] = parked;
  }
  if (syscall(SYS_close_range, 0U, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
    if (errno != ENOSYS && errno != EINVAL) return false;
    if (!MarkAllCloseOnExecFromProc()) return false;
  }
  // dup2 clears FD_CLOEXEC on the target; the parked copies keep it and vanish at exec.
  for (size_t i = 0; i < count; i++) {
    if (dup2(plan->scratchFds[i], plan->childFds[i]) < 0) return false;
  }
  return true;
}

void WriteDecimal(char* slot, long value) {
  char reversed[kPidDigitsRoom];
  size_t count = 0;
  do {
    reversed[count++] = static_cast<char>('0' + value % 10);
    value /= 10;
  } while (value > 0 && count < kPidDigitsRoom);
  for (size_t i = 0; i < count; i++) slot[i] = reversed[count - 1 - i];
  slot[count] = '\0';
}

int RunChild(void* argument) noexcept {
  auto* plan = static_cast<SpawnPlan*>(argument);

  ResetSignalDispositions();

  if (plan->newSession && syscall(SYS_setsid) < 0) FailInChild(plan, kStageSetsid);
  if (!ApplyFdMap(plan)) FailInChild(plan, kStageDup2);
  // Before chdir, so that cwd is taken inside the new root; before the ids drop, which would
  // take CAP_SYS_CHROOT with them.
  if (plan->changeRoot && syscall(SYS_chroot, plan->root.c_str()) < 0) {
    FailInChild(plan, kStageChroot);
  }
  if (plan->changeDirectory && syscall(SYS_chdir, plan->cwd.c_str()) < 0) {
    FailInChild(plan, kStageChdir);
  }

  // Raw syscalls: glibc's set*id wrappers broadcast the change to every thread of the process,
  // i.e. to Node's threads, since we share their memory but not their thread group.
  if (plan->setGroups &&
      syscall(MOS_SYS_setgroups, plan->groups.size(), plan->groups.data()) < 0) {
    FailInChild(plan, kStageSetgroups);
  }
  if (plan->setGid && syscall(MOS_SYS_setresgid, plan->gid, plan->gid, plan->gid) < 0) {
    FailInChild(plan, kStageSetgid);
  }
  if (plan->setUid && syscall(MOS_SYS_setresuid, plan->uid, plan->uid, plan->uid) < 0) {
    FailInChild(plan, kStageSetuid);
  }

  long pid = syscall(SYS_getpid);
  for (char* slot : plan->pidSlots) WriteDecimal(slot, pid);

  // Last: the mask survives exec, and every disposition is SIG_DFL by now.
  sigset_t empty;
  sigemptyset(&empty);
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty, nullptr, kKernelSigsetBytes);

  syscall(SYS_execve, plan->file.c_str(), plan->argv.data(), plan->envp.data());
  FailInChild(plan, kStageExecve);
}

// ---- parent side ---------------------------------------------------------------------------

uint32_t RequireId(Napi::Value value, const char* what) {
  // (uid_t)-1 means "leave unchanged" to setres*id, so it is not a valid id to ask for.
  return static_cast<uint32_t>(RequireInteger(value, what, 0, UINT32_MAX - 1));
}

void ParseFdMap(Napi::Env env, Napi::Value value, SpawnPlan* plan) {
  Napi::Array mappings = RequireArray(value, "options.fds");
  int highestChildFd = -1;
  for (uint32_t i = 0; i < mappings.Length(); i++) {
    Napi::Object mapping = RequireObject(mappings[i], "options.fds[]");
    int child = RequireFd(mapping.Get("child"), "options.fds[].child");
    int parent = RequireFd(mapping.Get("parent"), "options.fds[].parent");
    if (std::find(plan->childFds.begin(), plan->childFds.end(), child) != plan->childFds.end()) {
      ThrowTypeError(env, "options.fds maps child fd " + std::to_string(child) + " twice");
    }
    plan->childFds.push_back(child);
    plan->parentFds.push_back(parent);
    highestChildFd = std::max(highestChildFd, child);
  }
  plan->scratchFds.assign(plan->childFds.size(), -1);
  plan->scratchFdFloor = highestChildFd + 1;
}

// pidEnv variables replace any same-named entry of `env`, so the child sees exactly one value.
void ParseEnvironment(Napi::Value envValue, Napi::Value pidEnvValue, SpawnPlan* plan) {
  Napi::Env env = envValue.Env();
  std::vector<std::string> pidNames;
  if (!IsAbsent(pidEnvValue)) pidNames = RequireStringArray(pidEnvValue, "options.pidEnv");
  for (const std::string& name : pidNames) {
    if (name.empty() || name.find('=') != std::string::npos) {
      ThrowTypeError(env, "options.pidEnv names must be non-empty and contain no '='");
    }
  }

  for (std::string& entry : RequireStringArray(envValue, "options.env")) {
    bool replaced = std::any_of(pidNames.begin(), pidNames.end(), [&](const std::string& name) {
      return entry.size() > name.size() && entry.compare(0, name.size(), name) == 0 &&
             entry[name.size()] == '=';
    });
    if (!replaced) plan->envStrings.push_back(std::move(entry));
  }
  size_t firstPidEntry = plan->envStrings.size();
  for (const std::string& name : pidNames) {
    plan->envStrings.push_back(name + "=" + std::string(kPidDigitsRoom, '\0'));
  }

  // Pointers only once the vector no longer grows.
  for (std::string& entry : plan->envStrings) plan->envp.push_back(&entry[0]);
  plan->envp.push_back(nullptr);
  for (size_t i = 0; i < pidNames.size(); i++) {
    plan->pidSlots.push_back(&plan->envStrings[firstPidEntry + i][pidNames[i].size() + 1]);
  }
}

}  // namespace

void ParseSpawnOptions(Napi::Env env, Napi::Value value, SpawnPlan* plan) {
  Napi::Object options = RequireObject(value, "options");

  plan->file = RequireString(options.Get("file"), "options.file");
  plan->argvStrings = RequireStringArray(options.Get("argv"), "options.argv");
  for (std::string& argument : plan->argvStrings) plan->argv.push_back(&argument[0]);
  plan->argv.push_back(nullptr);

  ParseEnvironment(options.Get("env"), options.Get("pidEnv"), plan);
  ParseFdMap(env, options.Get("fds"), plan);

  Napi::Value root = options.Get("root");
  if (!IsAbsent(root)) {
    plan->changeRoot = true;
    plan->root = RequireString(root, "options.root");
  }
  Napi::Value cwd = options.Get("cwd");
  if (!IsAbsent(cwd)) {
    plan->changeDirectory = true;
    plan->cwd = RequireString(cwd, "options.cwd");
  } else if (plan->changeRoot) {
    // chroot leaves the working directory outside the new root: without a chdir the child
    // could still reach the old tree through it.
    plan->changeDirectory = true;
    plan->cwd = "/";
  }

  Napi::Value setsidValue = options.Get("setsid");
  plan->newSession = !IsAbsent(setsidValue) && setsidValue.ToBoolean().Value();

  Napi::Value uid = options.Get("uid");
  if (!IsAbsent(uid)) {
    plan->setUid = true;
    plan->uid = RequireId(uid, "options.uid");
  }
  Napi::Value gid = options.Get("gid");
  if (!IsAbsent(gid)) {
    plan->setGid = true;
    plan->gid = RequireId(gid, "options.gid");
  }
  Napi::Value groups = options.Get("groups");
  if (!IsAbsent(groups)) {
    Napi::Array list = RequireArray(groups, "options.groups");
    plan->setGroups = true;
    for (uint32_t i = 0; i < list.Length(); i++) {
      plan->groups.push_back(RequireId(list[i], "options.groups[]"));
    }
  } else if (plan->setUid || plan->setGid) {
    // Dropping ids while keeping root's supplementary groups is never what a caller means
    // (libuv does the same): no groups given means none.
    plan->setGroups = true;
  }
}

bool AddFdMapping(SpawnPlan* plan, int child, int parent) {
  if (std::find(plan->childFds.begin(), plan->childFds.end(), child) != plan->childFds.end()) {
    return false;
  }
  plan->childFds.push_back(child);
  plan->parentFds.push_back(parent);
  plan->scratchFds.push_back(-1);
  plan->scratchFdFloor = std::max(plan->scratchFdFloor, child + 1);
  return true;
}

namespace {

// The child's stack, as posix_spawn has one: the child must not run on (and scribble over) the
// stack of the suspended parent thread. Mapped once per thread and kept: a map and unmap per
// spawn cost page faults in the child and a TLB shoot-down across Node's threads on the unmap.
// The lowest page is a guard. CLONE_VFORK keeps one child at a time on it per thread.
char* ChildStackTop() {
  static thread_local char* top = nullptr;
  if (top != nullptr) return top;
  size_t pageBytes = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size_t mappingBytes = kChildStackBytes + pageBytes;
  void* stack = mmap(nullptr, mappingBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) return nullptr;
  mprotect(stack, pageBytes, PROT_NONE);
  top = static_cast<char*>(stack) + mappingBytes;
  return top;
}

}  // namespace

SpawnOutcome RunSpawnPlan(SpawnPlan* plan) {
  SpawnOutcome outcome;
  char* stackTop = ChildStackTop();
  if (stackTop == nullptr) {
    outcome.syscall = "clone";
    outcome.error = errno;
    return outcome;
  }
  plan->failedStage = kStageNone;
  plan->failedErrno = 0;

  // Block every signal, glibc's internal ones too (hence raw syscall, not pthread_sigmask), so
  // that no handler of ours runs in the child before it has reset the dispositions.
  sigset_t everySignal;
  sigset_t previousMask;
  memset(&everySignal, 0xff, sizeof everySignal);
  sigemptyset(&previousMask);
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &everySignal, &previousMask, kKernelSigsetBytes);

  pid_t pid = clone(RunChild, stackTop, CLONE_VM | CLONE_VFORK | SIGCHLD, plan);
  int cloneErrno = errno;

  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &previousMask, nullptr, kKernelSigsetBytes);

  if (pid < 0) {
    outcome.syscall = "clone";
    outcome.error = cloneErrno;
    return outcome;
  }
  outcome.pid = pid;
  if (plan->failedStage != kStageNone) {
    // The child is a zombie now; the reaper collects it (exit code 127) like any other child.
    int stage = plan->failedStage;
    outcome.syscall = StageName(stage);
    outcome.error = plan->failedErrno;
    if (stage == kStageExecve) outcome.subject = plan->file.c_str();
    if (stage == kStageChroot) outcome.subject = plan->root.c_str();
    if (stage == kStageChdir) outcome.subject = plan->cwd.c_str();
  }
  return outcome;
}

namespace {

Napi::Value Spawn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SpawnPlan plan;
  ParseSpawnOptions(env, info[0], &plan);
  SpawnOutcome outcome = RunSpawnPlan(&plan);
  if (outcome.error != 0) {
    Napi::Error error = NativeError(env, outcome.syscall, outcome.error, outcome.subject);
    if (outcome.pid > 0) error.Value().Set("pid", Napi::Number::New(env, outcome.pid));
    throw error;
  }
  return Napi::Number::New(env, outcome.pid);
}

// sched_yield cannot fail on Linux; there is nothing to report.
Napi::Value YieldCpu(const Napi::CallbackInfo& info) {
  sched_yield();
  return info.Env().Undefined();
}

}  // namespace

void RegisterSpawn(Napi::Env env, Napi::Object exports) {
  exports.Set("spawn", Napi::Function::New(env, Spawn, "spawn"));
  exports.Set("yieldCpu", Napi::Function::New(env, YieldCpu, "yieldCpu"));
}

}  // namespace mos
