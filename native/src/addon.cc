// Module registration: the exports are the methods of `Native` in native/types.ts but the TPM's
// (those are mos_tpm.node, src/tpm_addon.cc).
#include "addon.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  mos::RegisterSpawn(env, exports);
  mos::RegisterReap(env, exports);
  mos::RegisterSocket(env, exports);
  mos::RegisterPoll(env, exports);
  mos::RegisterMount(env, exports);
  mos::RegisterBoot(env, exports);
  mos::RegisterBlock(env, exports);
  mos::RegisterIdmap(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(mos_native, Init)
