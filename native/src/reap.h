// Reaping with armed respawns, shared by reap() and watchChildren() (boot.cc).
#pragma once

#include <napi.h>
#include <sys/types.h>

#include <string>
#include <vector>

#include "spawn.h"

namespace mos {

struct ExitRecord {
  pid_t pid = 0;
  bool exited = false;  // exit(code); else killed by `signal`
  int code = 0;
  int signal = 0;
  bool core = false;
  // The armed respawn that ran for this pid (reap.cc), if one was armed.
  bool respawned = false;
  SpawnOutcome respawn;  // its `subject` points into the freed plan: use respawnSubject
  bool hasRespawnSubject = false;
  std::string respawnSubject;
  int readinessFd = -1;  // read end of the new run's readiness pipe, or -1
};

// waitpid(-1, WNOHANG) until nothing is left to collect, running each exited pid's armed respawn
// right after its waitpid. Returns 0, or the errno of a waitpid that failed (after the exits
// collected before it, which are in `exits`).
int ReapExits(std::vector<ExitRecord>* exits);

// The ChildExit objects of native/types.ts.
Napi::Array ExitsToJs(Napi::Env env, const std::vector<ExitRecord>& exits);

}  // namespace mos
