// The spawn core shared by spawn() and the armed respawns of reap (see reap.cc): a plan parsed
// from JS options ahead of time, and the clone that runs it without touching JS.
#pragma once

#include <napi.h>
#include <sys/types.h>

#include <string>
#include <vector>

namespace mos {

// Everything the child needs, built before the clone. The child writes only `scratchFds`, the
// pid slots inside `envStrings`, and `failedStage`/`failedErrno`. It points into itself
// (argv/envp/pidSlots), so it is never copied: it lives behind a pointer.
struct SpawnPlan {
  SpawnPlan() = default;
  SpawnPlan(const SpawnPlan&) = delete;
  SpawnPlan& operator=(const SpawnPlan&) = delete;

  std::string file;
  std::vector<std::string> argvStrings;
  std::vector<std::string> envStrings;
  std::vector<char*> argv;  // NULL-terminated views of the strings above
  std::vector<char*> envp;

  bool changeRoot = false;
  std::string root;

  bool changeDirectory = false;
  std::string cwd;

  std::vector<int> childFds;
  std::vector<int> parentFds;
  std::vector<int> scratchFds;  // where the child parks each parent fd before the final dup2
  int scratchFdFloor = 0;       // above every child fd, so parking never lands on a target

  bool newSession = false;
  bool setGroups = false;
  std::vector<gid_t> groups;
  bool setGid = false;
  gid_t gid = 0;
  bool setUid = false;
  uid_t uid = 0;

  std::vector<char*> pidSlots;  // the value part of each pidEnv variable, filled by the child

  // Written by the child just before _exit(127). The parent reads them only after clone has
  // returned, which CLONE_VFORK orders after the child's exit; volatile keeps the compiler from
  // assuming the call left them untouched.
  volatile int failedStage = 0;
  volatile int failedErrno = 0;
};

// Reads SpawnOptions (native/types.ts) into `plan`; throws a TypeError on a broken contract.
void ParseSpawnOptions(Napi::Env env, Napi::Value options, SpawnPlan* plan);

// Adds one more fd mapping (parent fd -> child fd) to a parsed plan; false if `child` is taken.
bool AddFdMapping(SpawnPlan* plan, int child, int parent);

struct SpawnOutcome {
  pid_t pid = -1;            // the child (also when it failed before exec), or -1
  const char* syscall = "";  // on failure: the step that failed ("clone", "dup2", "execve", ...)
  int error = 0;             // errno of that step, 0 on success
  const char* subject = nullptr;  // path involved in the failure (execve: file, chroot: root,
                                  // chdir: cwd)
};

// clone(CLONE_VM|CLONE_VFORK) + exec of the plan. No JS, no allocation of its own: callable
// before any JavaScript runs (from reap). Returns once the child has exec'd or died.
SpawnOutcome RunSpawnPlan(SpawnPlan* plan);

}  // namespace mos
