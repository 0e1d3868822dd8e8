// The TPM addon's entry point (mos_tpm.node): only the TPM port, loaded on first use by
// native/index.ts so that processes which never touch the TPM never map the TSS or libcrypto.
#include <napi.h>

#include "addon.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  mos::RegisterTpm(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(mos_tpm, Init)
