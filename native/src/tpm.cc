// TPM 2.0 through the reference TSS (libtss2-esys): one function per TPM command sequence, no
// policy. Which index, which attributes, which PCRs and what to do on each failure are decided in
// TypeScript (init/trust/); this file only runs the commands.
//
// Every function opens its own TCTI + ESYS context, runs its sequence on libuv's thread pool and
// closes both again, so nothing TPM-side outlives a call (sessions it starts are flushed on every
// path). The TCTIs are linked directly (device for /dev/tpmrm0, swtpm for tests over TCP) instead
// of going through tctildr's dlopen: the initramfs copies only the addon's `ldd` closure.
//
// Failures reject with an Error whose message reads `Esys_NV_Read TPM_RC_POLICY_FAIL 0x01806d6f`
// (ESYS function, response-code name, subject) and whose fields are `code` (the name, handle /
// parameter / session number stripped), `rc` (the raw TSS2_RC), `syscall` (the ESYS function),
// `subject` and `description` (libtss2-rc's decoding, for humans).
#include <stdlib.h>
#include <string.h>

#include <tss2/tss2_esys.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tcti_device.h>
#include <tss2/tss2_tcti_swtpm.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "addon.h"
#include "args.h"
#include "errors.h"

namespace mos {
namespace {

// ── response codes ─────────────────────────────────────────────────────────────────────────

struct RcEntry {
  TSS2_RC code;
  const char* name;
};

#define MOS_TPM_RC(name) {TPM2_RC_##name, "TPM_RC_" #name}
const RcEntry kTpmRcNames[] = {
    MOS_TPM_RC(INITIALIZE), MOS_TPM_RC(FAILURE), MOS_TPM_RC(SEQUENCE), MOS_TPM_RC(DISABLED),
    MOS_TPM_RC(EXCLUSIVE), MOS_TPM_RC(AUTH_TYPE), MOS_TPM_RC(AUTH_MISSING), MOS_TPM_RC(POLICY),
    MOS_TPM_RC(PCR), MOS_TPM_RC(PCR_CHANGED), MOS_TPM_RC(UPGRADE), MOS_TPM_RC(TOO_MANY_CONTEXTS),
    MOS_TPM_RC(AUTH_UNAVAILABLE), MOS_TPM_RC(REBOOT), MOS_TPM_RC(UNBALANCED),
    MOS_TPM_RC(COMMAND_SIZE), MOS_TPM_RC(COMMAND_CODE), MOS_TPM_RC(AUTHSIZE),
    MOS_TPM_RC(AUTH_CONTEXT), MOS_TPM_RC(NV_RANGE), MOS_TPM_RC(NV_SIZE), MOS_TPM_RC(NV_LOCKED),
    MOS_TPM_RC(NV_AUTHORIZATION), MOS_TPM_RC(NV_UNINITIALIZED), MOS_TPM_RC(NV_SPACE),
    MOS_TPM_RC(NV_DEFINED), MOS_TPM_RC(BAD_CONTEXT), MOS_TPM_RC(CPHASH), MOS_TPM_RC(PARENT),
    MOS_TPM_RC(NEEDS_TEST), MOS_TPM_RC(NO_RESULT), MOS_TPM_RC(SENSITIVE),
    // format 1 (the handle, parameter or session number is stripped before the lookup)
    MOS_TPM_RC(ASYMMETRIC), MOS_TPM_RC(ATTRIBUTES), MOS_TPM_RC(HASH), MOS_TPM_RC(VALUE),
    MOS_TPM_RC(HIERARCHY), MOS_TPM_RC(KEY_SIZE), MOS_TPM_RC(MGF), MOS_TPM_RC(MODE),
    MOS_TPM_RC(TYPE), MOS_TPM_RC(HANDLE), MOS_TPM_RC(KDF), MOS_TPM_RC(RANGE),
    MOS_TPM_RC(AUTH_FAIL), MOS_TPM_RC(NONCE), MOS_TPM_RC(PP), MOS_TPM_RC(SCHEME), MOS_TPM_RC(SIZE),
    MOS_TPM_RC(SYMMETRIC), MOS_TPM_RC(TAG), MOS_TPM_RC(SELECTOR), MOS_TPM_RC(INSUFFICIENT),
    MOS_TPM_RC(SIGNATURE), MOS_TPM_RC(KEY), MOS_TPM_RC(POLICY_FAIL), MOS_TPM_RC(INTEGRITY),
    MOS_TPM_RC(TICKET), MOS_TPM_RC(RESERVED_BITS), MOS_TPM_RC(BAD_AUTH), MOS_TPM_RC(EXPIRED),
    MOS_TPM_RC(POLICY_CC), MOS_TPM_RC(BINDING), MOS_TPM_RC(CURVE), MOS_TPM_RC(ECC_POINT),
    // warnings
    MOS_TPM_RC(CONTEXT_GAP), MOS_TPM_RC(OBJECT_MEMORY), MOS_TPM_RC(SESSION_MEMORY),
    MOS_TPM_RC(MEMORY), MOS_TPM_RC(SESSION_HANDLES), MOS_TPM_RC(OBJECT_HANDLES),
    MOS_TPM_RC(LOCALITY), MOS_TPM_RC(YIELDED), MOS_TPM_RC(CANCELED), MOS_TPM_RC(TESTING),
    MOS_TPM_RC(REFERENCE_H0), MOS_TPM_RC(REFERENCE_H1), MOS_TPM_RC(REFERENCE_H2),
    MOS_TPM_RC(REFERENCE_H3), MOS_TPM_RC(REFERENCE_H4), MOS_TPM_RC(REFERENCE_H5),
    MOS_TPM_RC(REFERENCE_H6), MOS_TPM_RC(REFERENCE_S0), MOS_TPM_RC(REFERENCE_S1),
    MOS_TPM_RC(REFERENCE_S2), MOS_TPM_RC(REFERENCE_S3), MOS_TPM_RC(REFERENCE_S4),
    MOS_TPM_RC(REFERENCE_S5), MOS_TPM_RC(REFERENCE_S6), MOS_TPM_RC(NV_RATE), MOS_TPM_RC(LOCKOUT),
    MOS_TPM_RC(RETRY), MOS_TPM_RC(NV_UNAVAILABLE),
};
#undef MOS_TPM_RC

// TSS2_BASE_RC_* (tss2_common.h), indexed by value.
const char* const kBaseRcNames[] = {
    nullptr, "GENERAL_FAILURE", "NOT_IMPLEMENTED", "BAD_CONTEXT", "ABI_MISMATCH", "BAD_REFERENCE",
    "INSUFFICIENT_BUFFER", "BAD_SEQUENCE", "NO_CONNECTION", "TRY_AGAIN", "IO_ERROR", "BAD_VALUE",
    "NOT_PERMITTED", "INVALID_SESSIONS", "NO_DECRYPT_PARAM", "NO_ENCRYPT_PARAM", "BAD_SIZE",
    "MALFORMED_RESPONSE", "INSUFFICIENT_CONTEXT", "INSUFFICIENT_RESPONSE", "INCOMPATIBLE_TCTI",
    "NOT_SUPPORTED", "BAD_TCTI_STRUCTURE", "MEMORY", "BAD_TR", "MULTIPLE_DECRYPT_SESSIONS",
    "MULTIPLE_ENCRYPT_SESSIONS", "RSP_AUTH_FAILED", "NO_CONFIG", "BAD_PATH", "NOT_DELETABLE",
    "PATH_ALREADY_EXISTS", "KEY_NOT_FOUND", "SIGNATURE_VERIFICATION_FAILED", "HASH_MISMATCH",
    "KEY_NOT_DUPLICABLE", "PATH_NOT_FOUND", "NO_CERT", "NO_PCR", "PCR_NOT_RESETTABLE",
    "BAD_TEMPLATE", "AUTHORIZATION_FAILED", "AUTHORIZATION_UNKNOWN", "NV_NOT_READABLE",
    "NV_TOO_SMALL", "NV_NOT_WRITEABLE", "POLICY_UNKNOWN", "NV_WRONG_TYPE", "NAME_ALREADY_EXISTS",
    "NO_TPM",
};

std::string Hex(uint32_t value, int width) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%0*x", width, value);
  return text;
}

// The TPM's response code without the handle/parameter/session number: TPM2_RC_POLICY_FAIL for
// 0x99d (policy failure in session 1).
TSS2_RC TpmBaseCode(TSS2_RC rc) {
  TSS2_RC code = rc & 0xFFFF;
  if (code & TPM2_RC_FMT1) return (code & 0x3F) | TPM2_RC_FMT1;
  return code;
}

// A stable name for a TSS2_RC: `TPM_RC_<name>` for the TPM's own codes (also when a resource
// manager relays them), `TSS2_<LAYER>_RC_<name>` for the TSS layers.
std::string RcName(TSS2_RC rc) {
  TSS2_RC layer = rc & TSS2_RC_LAYER_MASK;
  if (layer == TSS2_TPM_RC_LAYER || layer == TSS2_RESMGR_TPM_RC_LAYER) {
    TSS2_RC code = TpmBaseCode(rc);
    for (const RcEntry& entry : kTpmRcNames) {
      if (entry.code == code) return entry.name;
    }
    return "TPM_RC_" + Hex(code, 3);
  }
  const char* prefix;
  switch (layer) {
    case TSS2_FEATURE_RC_LAYER: prefix = "TSS2_FEATURE_RC_"; break;
    case TSS2_ESAPI_RC_LAYER: prefix = "TSS2_ESYS_RC_"; break;
    case TSS2_SYS_RC_LAYER: prefix = "TSS2_SYS_RC_"; break;
    case TSS2_MU_RC_LAYER: prefix = "TSS2_MU_RC_"; break;
    case TSS2_TCTI_RC_LAYER: prefix = "TSS2_TCTI_RC_"; break;
    case TSS2_RESMGR_RC_LAYER: prefix = "TSS2_RESMGR_RC_"; break;
    default: return "TSS2_RC_" + Hex(rc, 8);
  }
  TSS2_RC base = rc & 0xFFFF;
  size_t names = sizeof kBaseRcNames / sizeof kBaseRcNames[0];
  if (base > 0 && base < names) return std::string(prefix) + kBaseRcNames[base];
  return std::string(prefix) + Hex(base, 4);
}

bool IsTpmCode(TSS2_RC rc, TSS2_RC code) {
  TSS2_RC layer = rc & TSS2_RC_LAYER_MASK;
  return (layer == TSS2_TPM_RC_LAYER || layer == TSS2_RESMGR_TPM_RC_LAYER) &&
         TpmBaseCode(rc) == code;
}

// A failure on the worker thread, turned into a JS Error on the main thread.
struct TpmFailure {
  const char* syscall;
  TSS2_RC rc;
  // Set for failures that are not a TSS2_RC (a PCR bank the TPM does not have).
  std::string code;
};

void Check(TSS2_RC rc, const char* syscall) {
  if (rc != TSS2_RC_SUCCESS) throw TpmFailure{syscall, rc, {}};
}

Napi::Error TpmError(Napi::Env env, const TpmFailure& failure, const std::string& subject) {
  std::string code = failure.code.empty() ? RcName(failure.rc) : failure.code;
  std::string message = std::string(failure.syscall) + " " + code;
  if (!subject.empty()) message += " " + subject;
  Napi::Error error = Napi::Error::New(env, message);
  Napi::Object fields = error.Value();
  fields.Set("code", code);
  fields.Set("rc", Napi::Number::New(env, failure.rc));
  fields.Set("syscall", failure.syscall);
  if (!subject.empty()) fields.Set("subject", subject);
  if (failure.code.empty()) fields.Set("description", Tss2_RC_Decode(failure.rc));
  return error;
}

// ── algorithms ─────────────────────────────────────────────────────────────────────────────

struct HashAlg {
  const char* name;
  TPMI_ALG_HASH id;
};
const HashAlg kHashAlgs[] = {
    {"sha1", TPM2_ALG_SHA1},
    {"sha256", TPM2_ALG_SHA256},
    {"sha384", TPM2_ALG_SHA384},
    {"sha512", TPM2_ALG_SHA512},
};

TPMI_ALG_HASH RequireHashAlg(Napi::Value value, const char* what) {
  std::string name = RequireString(value, what);
  for (const HashAlg& alg : kHashAlgs) {
    if (name == alg.name) return alg.id;
  }
  ThrowTypeError(value.Env(), std::string(what) + " must be sha1, sha256, sha384 or sha512");
}

std::string HashAlgName(TPMI_ALG_HASH id) {
  for (const HashAlg& alg : kHashAlgs) {
    if (id == alg.id) return alg.name;
  }
  return "alg-" + Hex(id, 4);
}

// ── arguments ──────────────────────────────────────────────────────────────────────────────

enum class TctiKind { kDevice, kSwtpm };

struct TctiSpec {
  TctiKind kind;
  std::string conf;  // device path, or the swtpm TCTI's `host=...,port=...`
  std::string text;  // as given, for error messages
};

TctiSpec RequireTcti(Napi::Value value) {
  std::string text = RequireString(value, "tcti");
  auto startsWith = [&](const char* prefix) { return text.rfind(prefix, 0) == 0; };
  if (startsWith("device:") && text.size() > 7) return {TctiKind::kDevice, text.substr(7), text};
  if (startsWith("swtpm:") && text.size() > 6) return {TctiKind::kSwtpm, text.substr(6), text};
  ThrowTypeError(value.Env(), "tcti must be device:<path> or swtpm:host=<host>,port=<port>, not " +
                                  text);
}

// NV indices live in 0x01000000-0x01ffffff (TPM_HT_NV_INDEX).
TPM2_HANDLE RequireNvIndex(Napi::Value value) {
  return static_cast<TPM2_HANDLE>(RequireInteger(value, "index", 0x01000000, 0x01FFFFFF));
}

std::vector<uint8_t> RequireBytes(Napi::Value value, const char* what, size_t max) {
  if (!value.IsBuffer()) ThrowTypeError(value.Env(), std::string(what) + " must be a Buffer");
  auto buffer = value.As<Napi::Buffer<uint8_t>>();
  if (buffer.Length() > max) {
    ThrowTypeError(value.Env(), std::string(what) + " must be at most " + std::to_string(max) +
                                    " bytes");
  }
  return std::vector<uint8_t>(buffer.Data(), buffer.Data() + buffer.Length());
}

// PCR numbers 0-23 (PC Client TPMs have 24): the selection bitmap is always 3 bytes, as
// tpm2-tools and the kernel send it, so policy digests computed in TypeScript match.
constexpr int kPcrCount = 24;
constexpr uint8_t kPcrSelectSize = 3;

std::vector<int> RequirePcrs(Napi::Value value) {
  Napi::Array array = RequireArray(value, "pcrs");
  if (array.Length() == 0) ThrowTypeError(value.Env(), "pcrs must not be empty");
  std::vector<int> pcrs;
  for (uint32_t i = 0; i < array.Length(); i++) {
    pcrs.push_back(static_cast<int>(RequireInteger(array[i], "pcrs[]", 0, kPcrCount - 1)));
  }
  return pcrs;
}

TPML_PCR_SELECTION PcrSelection(TPMI_ALG_HASH bank, const std::vector<int>& pcrs) {
  TPML_PCR_SELECTION selection = {};
  selection.count = 1;
  selection.pcrSelections[0].hash = bank;
  selection.pcrSelections[0].sizeofSelect = kPcrSelectSize;
  for (int pcr : pcrs) selection.pcrSelections[0].pcrSelect[pcr / 8] |= 1u << (pcr % 8);
  return selection;
}

bool SelectionEmpty(const TPMS_PCR_SELECTION& selection) {
  for (int i = 0; i < selection.sizeofSelect; i++) {
    if (selection.pcrSelect[i] != 0) return false;
  }
  return true;
}

// ── contexts ───────────────────────────────────────────────────────────────────────────────

// One TCTI + ESYS context for the length of one call (on the worker thread).
class Tpm {
 public:
  explicit Tpm(const TctiSpec& spec) {
    size_t size = 0;
    auto init = spec.kind == TctiKind::kDevice ? Tss2_Tcti_Device_Init : Tss2_Tcti_Swtpm_Init;
    const char* initName =
        spec.kind == TctiKind::kDevice ? "Tss2_Tcti_Device_Init" : "Tss2_Tcti_Swtpm_Init";
    Check(init(nullptr, &size, spec.conf.c_str()), initName);
    tcti_ = static_cast<TSS2_TCTI_CONTEXT*>(calloc(1, size));
    if (tcti_ == nullptr) throw TpmFailure{initName, TSS2_TCTI_RC_MEMORY, {}};
    TSS2_RC rc = init(tcti_, &size, spec.conf.c_str());
    if (rc != TSS2_RC_SUCCESS) {
      free(tcti_);
      tcti_ = nullptr;
      throw TpmFailure{initName, rc, {}};
    }
    rc = Esys_Initialize(&esys_, tcti_, nullptr);
    if (rc != TSS2_RC_SUCCESS) {
      Release();
      throw TpmFailure{"Esys_Initialize", rc, {}};
    }
  }
  ~Tpm() { Release(); }
  Tpm(const Tpm&) = delete;
  Tpm& operator=(const Tpm&) = delete;

  ESYS_CONTEXT* operator*() const { return esys_; }

  // The ESYS_TR of an NV index (reads its public area from the TPM).
  ESYS_TR NvIndex(TPM2_HANDLE index) {
    ESYS_TR handle = ESYS_TR_NONE;
    Check(Esys_TR_FromTPMPublic(esys_, index, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &handle),
          "Esys_TR_FromTPMPublic");
    return handle;
  }

  // TPM2_PT_NV_BUFFER_MAX: the most data one NV_Read / NV_Write may carry.
  uint16_t NvBufferMax() {
    TPMI_YES_NO more = TPM2_NO;
    TPMS_CAPABILITY_DATA* data = nullptr;
    Check(Esys_GetCapability(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                             TPM2_CAP_TPM_PROPERTIES, TPM2_PT_NV_BUFFER_MAX, 1, &more, &data),
          "Esys_GetCapability");
    uint32_t max = 512;  // the smallest any TPM reports, should the property be missing
    const TPML_TAGGED_TPM_PROPERTY& properties = data->data.tpmProperties;
    if (properties.count > 0 && properties.tpmProperty[0].property == TPM2_PT_NV_BUFFER_MAX) {
      max = properties.tpmProperty[0].value;
    }
    Esys_Free(data);
    return static_cast<uint16_t>(std::min<uint32_t>(max, TPM2_MAX_NV_BUFFER_SIZE));
  }

 private:
  void Release() {
    if (esys_ != nullptr) Esys_Finalize(&esys_);
    if (tcti_ != nullptr) {
      Tss2_Tcti_Finalize(tcti_);
      free(tcti_);
      tcti_ = nullptr;
    }
  }

  TSS2_TCTI_CONTEXT* tcti_ = nullptr;
  ESYS_CONTEXT* esys_ = nullptr;
};

// Flushes a session on every path out of a scope (the TPM has few session slots, and without a
// resource manager, as with swtpm over TCP, nothing else would flush it).
class SessionGuard {
 public:
  SessionGuard(ESYS_CONTEXT* esys, ESYS_TR session) : esys_(esys), session_(session) {}
  ~SessionGuard() {
    if (session_ != ESYS_TR_NONE) Esys_FlushContext(esys_, session_);
  }
  SessionGuard(const SessionGuard&) = delete;
  SessionGuard& operator=(const SessionGuard&) = delete;

 private:
  ESYS_CONTEXT* esys_;
  ESYS_TR session_;
};

std::unique_ptr<TPM2B_NV_PUBLIC, void (*)(void*)> ReadNvPublic(ESYS_CONTEXT* esys, ESYS_TR nv) {
  TPM2B_NV_PUBLIC* pub = nullptr;
  Check(Esys_NV_ReadPublic(esys, nv, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pub, nullptr),
        "Esys_NV_ReadPublic");
  return {pub, Esys_Free};
}

// ── the worker ─────────────────────────────────────────────────────────────────────────────

// Runs one TPM command sequence on the thread pool and settles a promise with its outcome.
class TpmWorker : public Napi::AsyncWorker {
 public:
  TpmWorker(Napi::Env env, const char* name, TctiSpec tcti, std::string subject)
      : Napi::AsyncWorker(env, name),
        deferred_(Napi::Promise::Deferred::New(env)),
        tcti_(std::move(tcti)),
        subject_(std::move(subject)) {}

  Napi::Promise Queued() {
    Napi::Promise promise = deferred_.Promise();
    Queue();  // deletes itself after OnOK / OnError
    return promise;
  }

 protected:
  // Worker thread: runs the sequence; throws TpmFailure.
  virtual void Run(Tpm& tpm) = 0;
  // Main thread: the value the promise resolves with.
  virtual Napi::Value Result(Napi::Env env) { return env.Undefined(); }

 private:
  void Execute() override {
    try {
      Tpm tpm(tcti_);
      Run(tpm);
    } catch (const TpmFailure& failure) {
      failure_ = failure;
      failed_ = true;
      // A failed TCTI init is about the TCTI; everything else is about the call's subject.
      if (strncmp(failure.syscall, "Tss2_Tcti_", 10) == 0) subject_ = tcti_.text;
    } catch (const std::exception& error) {
      SetError(error.what());
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (failed_) {
      deferred_.Reject(TpmError(env, failure_, subject_).Value());
    } else {
      deferred_.Resolve(Result(env));
    }
  }

  void OnError(const Napi::Error& error) override { deferred_.Reject(error.Value()); }

  Napi::Promise::Deferred deferred_;
  TctiSpec tcti_;
  std::string subject_;
  TpmFailure failure_{"", 0, {}};
  bool failed_ = false;
};

// ── NV ─────────────────────────────────────────────────────────────────────────────────────

class NvReadPublicWorker : public TpmWorker {
 public:
  NvReadPublicWorker(Napi::Env env, TctiSpec tcti, TPM2_HANDLE index)
      : TpmWorker(env, "tpmNvReadPublic", std::move(tcti), Hex(index, 8)), index_(index) {}

 private:
  void Run(Tpm& tpm) override {
    ESYS_TR nv = ESYS_TR_NONE;
    // TR_FromTPMPublic already runs NV_ReadPublic; an undefined index answers TPM_RC_HANDLE.
    TSS2_RC rc =
        Esys_TR_FromTPMPublic(*tpm, index_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &nv);
    if (IsTpmCode(rc, TPM2_RC_HANDLE)) return;
    Check(rc, "Esys_TR_FromTPMPublic");
    auto pub = ReadNvPublic(*tpm, nv);
    public_ = pub->nvPublic;
    found_ = true;
  }

  Napi::Value Result(Napi::Env env) override {
    if (!found_) return env.Null();
    Napi::Object result = Napi::Object::New(env);
    result.Set("index", Napi::Number::New(env, public_.nvIndex));
    result.Set("size", Napi::Number::New(env, public_.dataSize));
    result.Set("attributes", Napi::Number::New(env, public_.attributes));
    result.Set("authPolicy", Napi::Buffer<uint8_t>::Copy(env, public_.authPolicy.buffer,
                                                         public_.authPolicy.size));
    result.Set("nameAlg", HashAlgName(public_.nameAlg));
    return result;
  }

  TPM2_HANDLE index_;
  TPMS_NV_PUBLIC public_ = {};
  bool found_ = false;
};

class NvDefineWorker : public TpmWorker {
 public:
  NvDefineWorker(Napi::Env env, TctiSpec tcti, TPMS_NV_PUBLIC pub)
      : TpmWorker(env, "tpmNvDefine", std::move(tcti), Hex(pub.nvIndex, 8)), public_(pub) {}

 private:
  void Run(Tpm& tpm) override {
    TPM2B_AUTH auth = {};  // the index's own authValue: empty (access is by attributes/policy)
    TPM2B_NV_PUBLIC info = {};
    info.nvPublic = public_;
    ESYS_TR nv = ESYS_TR_NONE;
    // Owner hierarchy, owner authorization by password (ESYS's default: empty).
    Check(Esys_NV_DefineSpace(*tpm, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                              ESYS_TR_NONE, &auth, &info, &nv),
          "Esys_NV_DefineSpace");
  }

  TPMS_NV_PUBLIC public_;
};

class NvWriteWorker : public TpmWorker {
 public:
  NvWriteWorker(Napi::Env env, TctiSpec tcti, TPM2_HANDLE index, std::vector<uint8_t> data)
      : TpmWorker(env, "tpmNvWrite", std::move(tcti), Hex(index, 8)),
        index_(index),
        data_(std::move(data)) {}

 private:
  void Run(Tpm& tpm) override {
    ESYS_TR nv = tpm.NvIndex(index_);
    uint16_t chunk = tpm.NvBufferMax();
    size_t offset = 0;
    do {
      TPM2B_MAX_NV_BUFFER buffer = {};
      buffer.size = static_cast<uint16_t>(std::min<size_t>(chunk, data_.size() - offset));
      memcpy(buffer.buffer, data_.data() + offset, buffer.size);
      Check(Esys_NV_Write(*tpm, ESYS_TR_RH_OWNER, nv, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                          ESYS_TR_NONE, &buffer, static_cast<uint16_t>(offset)),
            "Esys_NV_Write");
      offset += buffer.size;
    } while (offset < data_.size());
  }

  TPM2_HANDLE index_;
  std::vector<uint8_t> data_;
};

class NvWriteLockWorker : public TpmWorker {
 public:
  NvWriteLockWorker(Napi::Env env, TctiSpec tcti, TPM2_HANDLE index)
      : TpmWorker(env, "tpmNvWriteLock", std::move(tcti), Hex(index, 8)), index_(index) {}

 private:
  void Run(Tpm& tpm) override {
    ESYS_TR nv = tpm.NvIndex(index_);
    Check(Esys_NV_WriteLock(*tpm, ESYS_TR_RH_OWNER, nv, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                            ESYS_TR_NONE),
          "Esys_NV_WriteLock");
  }

  TPM2_HANDLE index_;
};

class NvUndefineWorker : public TpmWorker {
 public:
  NvUndefineWorker(Napi::Env env, TctiSpec tcti, TPM2_HANDLE index)
      : TpmWorker(env, "tpmNvUndefine", std::move(tcti), Hex(index, 8)), index_(index) {}

 private:
  void Run(Tpm& tpm) override {
    ESYS_TR nv = tpm.NvIndex(index_);
    Check(Esys_NV_UndefineSpace(*tpm, ESYS_TR_RH_OWNER, nv, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                ESYS_TR_NONE),
          "Esys_NV_UndefineSpace");
  }

  TPM2_HANDLE index_;
};

// The whole index, chunk by chunk (one NV_Read carries at most TPM2_PT_NV_BUFFER_MAX bytes).
// `authorize` runs before each chunk's read and returns the session that authorizes it.
template <typename Authorize>
void ReadWholeIndex(Tpm& tpm, ESYS_TR nv, uint16_t size, Authorize authorize, std::vector<uint8_t>& out) {
  uint16_t chunk = tpm.NvBufferMax();
  out.reserve(size);
  uint16_t offset = 0;
  do {
    ESYS_TR session = authorize(offset);
    uint16_t length = std::min<uint16_t>(chunk, size - offset);
    TPM2B_MAX_NV_BUFFER* data = nullptr;
    Check(Esys_NV_Read(*tpm, nv, nv, session, ESYS_TR_NONE, ESYS_TR_NONE, length, offset, &data),
          "Esys_NV_Read");
    out.insert(out.end(), data->buffer, data->buffer + data->size);
    Esys_Free(data);
    offset = static_cast<uint16_t>(offset + length);
  } while (offset < size);
}

// NV_Read authorized by the index's own authValue (a password session; ESYS sends the empty
// password an ESYS_TR has until Esys_TR_SetAuth), chunk by chunk, the whole index. The TPM checks
// TPMA_NV_AUTHREAD itself.
class NvReadWorker : public TpmWorker {
 public:
  NvReadWorker(Napi::Env env, TctiSpec tcti, TPM2_HANDLE index)
      : TpmWorker(env, "tpmNvRead", std::move(tcti), Hex(index, 8)), index_(index) {}

 private:
  void Run(Tpm& tpm) override {
    ESYS_TR nv = tpm.NvIndex(index_);
    auto pub = ReadNvPublic(*tpm, nv);
    ReadWholeIndex(tpm, nv, pub->nvPublic.dataSize, [](uint16_t) { return ESYS_TR_PASSWORD; }, data_);
  }

  Napi::Value Result(Napi::Env env) override {
    return Napi::Buffer<uint8_t>::Copy(env, data_.data(), data_.size());
  }

  TPM2_HANDLE index_;
  std::vector<uint8_t> data_;
};

// Policy session → PolicyPCR over the current PCR values (empty pcrDigest: the TPM takes the
// values it holds now) → NV_Read authorized by that session, chunk by chunk, the whole index.
class NvReadWithPcrPolicyWorker : public TpmWorker {
 public:
  NvReadWithPcrPolicyWorker(Napi::Env env, TctiSpec tcti, TPM2_HANDLE index, TPMI_ALG_HASH bank,
                            std::vector<int> pcrs)
      : TpmWorker(env, "tpmNvReadWithPcrPolicy", std::move(tcti), Hex(index, 8)),
        index_(index),
        selection_(PcrSelection(bank, pcrs)) {}

 private:
  void Run(Tpm& tpm) override {
    ESYS_TR nv = tpm.NvIndex(index_);
    auto pub = ReadNvPublic(*tpm, nv);

    // Unsalted, unbound: the session only carries the policy. Its hash is the index's nameAlg,
    // the algorithm the index's authPolicy was computed with.
    TPMT_SYM_DEF symmetric = {};
    symmetric.algorithm = TPM2_ALG_NULL;
    ESYS_TR session = ESYS_TR_NONE;
    Check(Esys_StartAuthSession(*tpm, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                ESYS_TR_NONE, nullptr, TPM2_SE_POLICY, &symmetric,
                                pub->nvPublic.nameAlg, &session),
          "Esys_StartAuthSession");
    SessionGuard guard(*tpm, session);
    // Keep the session across chunks; the guard flushes it at the end.
    Check(Esys_TRSess_SetAttributes(*tpm, session, TPMA_SESSION_CONTINUESESSION,
                                    TPMA_SESSION_CONTINUESESSION),
          "Esys_TRSess_SetAttributes");

    TPM2B_DIGEST currentValues = {};  // size 0: the TPM uses the PCRs as they are now
    auto satisfyPolicy = [&](uint16_t offset) {
      // A policy session's digest is consumed by the command it authorizes: satisfy it anew
      // for every chunk.
      if (offset > 0) {
        Check(Esys_PolicyRestart(*tpm, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE),
              "Esys_PolicyRestart");
      }
      Check(Esys_PolicyPCR(*tpm, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                           &currentValues, &selection_),
            "Esys_PolicyPCR");
      return session;
    };
    ReadWholeIndex(tpm, nv, pub->nvPublic.dataSize, satisfyPolicy, data_);
  }

  Napi::Value Result(Napi::Env env) override {
    return Napi::Buffer<uint8_t>::Copy(env, data_.data(), data_.size());
  }

  TPM2_HANDLE index_;
  TPML_PCR_SELECTION selection_;
  std::vector<uint8_t> data_;
};

// ── PCRs ───────────────────────────────────────────────────────────────────────────────────

class PcrReadWorker : public TpmWorker {
 public:
  PcrReadWorker(Napi::Env env, TctiSpec tcti, TPMI_ALG_HASH bank, std::vector<int> pcrs)
      : TpmWorker(env, "tpmPcrRead", std::move(tcti), HashAlgName(bank)),
        bank_(bank),
        pcrs_(std::move(pcrs)) {}

 private:
  void Run(Tpm& tpm) override {
    // PCR_Read answers at most 8 digests at a time: ask again for what is still missing.
    TPML_PCR_SELECTION wanted = PcrSelection(bank_, pcrs_);
    for (;;) {
      UINT32 counter = 0;
      TPML_PCR_SELECTION* got = nullptr;
      TPML_DIGEST* digests = nullptr;
      Check(Esys_PCR_Read(*tpm, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &wanted, &counter, &got,
                          &digests),
            "Esys_PCR_Read");
      std::unique_ptr<TPML_PCR_SELECTION, void (*)(void*)> gotOwner(got, Esys_Free);
      std::unique_ptr<TPML_DIGEST, void (*)(void*)> digestsOwner(digests, Esys_Free);
      bool progress = false;
      uint32_t next = 0;
      for (uint32_t s = 0; s < got->count; s++) {
        // The digests follow the selections in order: consume one per selected bit.
        const TPMS_PCR_SELECTION& selection = got->pcrSelections[s];
        for (int pcr = 0; pcr < selection.sizeofSelect * 8; pcr++) {
          if (!(selection.pcrSelect[pcr / 8] & (1u << (pcr % 8)))) continue;
          if (next >= digests->count) break;
          const TPM2B_DIGEST& digest = digests->digests[next++];
          if (selection.hash != bank_ || pcr >= kPcrCount) continue;
          values_[pcr].assign(digest.buffer, digest.buffer + digest.size);
          wanted.pcrSelections[0].pcrSelect[pcr / 8] &= ~(1u << (pcr % 8));
          progress = true;
        }
      }
      if (SelectionEmpty(wanted.pcrSelections[0])) return;
      // The TPM answered nothing for what is left: that bank is not allocated.
      if (!progress) throw TpmFailure{"Esys_PCR_Read", 0, "PCR_UNAVAILABLE"};
    }
  }

  Napi::Value Result(Napi::Env env) override {
    // In the order asked for.
    Napi::Array result = Napi::Array::New(env, pcrs_.size());
    for (size_t i = 0; i < pcrs_.size(); i++) {
      const std::vector<uint8_t>& value = values_[pcrs_[i]];
      result.Set(static_cast<uint32_t>(i), Napi::Buffer<uint8_t>::Copy(env, value.data(), value.size()));
    }
    return result;
  }

  TPMI_ALG_HASH bank_;
  std::vector<int> pcrs_;
  std::vector<uint8_t> values_[kPcrCount];
};

// ── exports ────────────────────────────────────────────────────────────────────────────────

Napi::Value TpmNvReadPublic(const Napi::CallbackInfo& info) {
  TctiSpec tcti = RequireTcti(info[0]);
  TPM2_HANDLE index = RequireNvIndex(info[1]);
  return (new NvReadPublicWorker(info.Env(), std::move(tcti), index))->Queued();
}

Napi::Value TpmNvDefine(const Napi::CallbackInfo& info) {
  TctiSpec tcti = RequireTcti(info[0]);
  Napi::Object definition = RequireObject(info[1], "definition");
  TPMS_NV_PUBLIC pub = {};
  pub.nvIndex = RequireNvIndex(definition.Get("index"));
  pub.dataSize =
      static_cast<uint16_t>(RequireInteger(definition.Get("size"), "definition.size", 1, 2048));
  pub.attributes = static_cast<TPMA_NV>(
      RequireInteger(definition.Get("attributes"), "definition.attributes", 0, UINT32_MAX));
  Napi::Value nameAlg = definition.Get("nameAlg");
  pub.nameAlg =
      IsAbsent(nameAlg) ? TPM2_ALG_SHA256 : RequireHashAlg(nameAlg, "definition.nameAlg");
  std::vector<uint8_t> policy =
      RequireBytes(definition.Get("authPolicy"), "definition.authPolicy", sizeof(TPMU_HA));
  pub.authPolicy.size = static_cast<uint16_t>(policy.size());
  memcpy(pub.authPolicy.buffer, policy.data(), policy.size());
  return (new NvDefineWorker(info.Env(), std::move(tcti), pub))->Queued();
}

Napi::Value TpmNvWrite(const Napi::CallbackInfo& info) {
  TctiSpec tcti = RequireTcti(info[0]);
  TPM2_HANDLE index = RequireNvIndex(info[1]);
  std::vector<uint8_t> data = RequireBytes(info[2], "data", UINT16_MAX);
  if (data.empty()) ThrowTypeError(info.Env(), "data must not be empty");
  return (new NvWriteWorker(info.Env(), std::move(tcti), index, std::move(data)))->Queued();
}

Napi::Value TpmNvWriteLock(const Napi::CallbackInfo& info) {
  TctiSpec tcti = RequireTcti(info[0]);
  TPM2_HANDLE index = RequireNvIndex(info[1]);
  return (new NvWriteLockWorker(info.Env(), std::move(tcti), index))->Queued();
}

Napi::Value TpmNvUndefine(const Napi::CallbackInfo& info) {
  TctiSpec tcti = RequireTcti(info[0]);
  TPM2_HANDLE index = RequireNvIndex(info[1]);
  return (new NvUndefineWorker(info.Env(), std::move(tcti), index))->Queued();
}

Napi::Value TpmNvRead(const Napi::CallbackInfo& info) {
  TctiSpec tcti = RequireTcti(info[0]);
  TPM2_HANDLE index = RequireNvIndex(info[1]);
  return (new NvReadWorker(info.Env(), std::move(tcti), index))->Queued();
}

Napi::Value TpmNvReadWithPcrPolicy(const Napi::CallbackInfo& info) {
  TctiSpec tcti = RequireTcti(info[0]);
  TPM2_HANDLE index = RequireNvIndex(info[1]);
  Napi::Object policy = RequireObject(info[2], "policy");
  TPMI_ALG_HASH bank = RequireHashAlg(policy.Get("bank"), "policy.bank");
  std::vector<int> pcrs = RequirePcrs(policy.Get("pcrs"));
  return (new NvReadWithPcrPolicyWorker(info.Env(), std::move(tcti), index, bank, std::move(pcrs)))
      ->Queued();
}

Napi::Value TpmPcrRead(const Napi::CallbackInfo& info) {
  TctiSpec tcti = RequireTcti(info[0]);
  TPMI_ALG_HASH bank = RequireHashAlg(info[1], "bank");
  std::vector<int> pcrs = RequirePcrs(info[2]);
  return (new PcrReadWorker(info.Env(), std::move(tcti), bank, std::move(pcrs)))->Queued();
}

}  // namespace

void RegisterTpm(Napi::Env env, Napi::Object exports) {
  // The TSS logs every TPM error it sees to stderr; here errors are reported as exceptions and
  // logged (or not) by TypeScript. Respect an explicit TSS2_LOG for debugging.
  setenv("TSS2_LOG", "all+NONE", 0);

  exports.Set("tpmNvReadPublic", Napi::Function::New(env, TpmNvReadPublic, "tpmNvReadPublic"));
  exports.Set("tpmNvDefine", Napi::Function::New(env, TpmNvDefine, "tpmNvDefine"));
  exports.Set("tpmNvWrite", Napi::Function::New(env, TpmNvWrite, "tpmNvWrite"));
  exports.Set("tpmNvWriteLock", Napi::Function::New(env, TpmNvWriteLock, "tpmNvWriteLock"));
  exports.Set("tpmNvUndefine", Napi::Function::New(env, TpmNvUndefine, "tpmNvUndefine"));
  exports.Set("tpmNvRead", Napi::Function::New(env, TpmNvRead, "tpmNvRead"));
  exports.Set("tpmNvReadWithPcrPolicy",
              Napi::Function::New(env, TpmNvReadWithPcrPolicy, "tpmNvReadWithPcrPolicy"));
  exports.Set("tpmPcrRead", Napi::Function::New(env, TpmPcrRead, "tpmPcrRead"));
}

}  // namespace mos
