// errno -> JS Error, shaped like Node's own errno errors (see NativeError in native/types.ts).
#pragma once

#include <napi.h>

#include <string>

namespace mos {

// The errno name, e.g. "ENOENT" (or "E<number>" for a value glibc has no name for).
std::string ErrnoName(int error);

// An Error whose message reads `<syscall> <CODE> <path>` (no path part when `path` is null) and
// which carries `code`, `errno` (positive, as in os.constants.errno), `syscall` and `path`.
Napi::Error NativeError(Napi::Env env, const char* syscall, int error, const char* path = nullptr);

[[noreturn]] void ThrowNativeError(Napi::Env env, const char* syscall, int error,
                                   const char* path = nullptr);

// For arguments that break the contract in types.ts: a programming error, not a syscall failure.
[[noreturn]] void ThrowTypeError(Napi::Env env, const std::string& message);

}  // namespace mos
