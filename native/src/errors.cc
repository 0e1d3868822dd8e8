#include "errors.h"

#include <string.h>

namespace mos {

std::string ErrnoName(int error) {
  // strerrorname_np (glibc >= 2.32) knows every errno the running libc knows; no table to keep.
  const char* name = strerrorname_np(error);
  if (name != nullptr) return name;
  return "E" + std::to_string(error);
}

Napi::Error NativeError(Napi::Env env, const char* syscall, int error, const char* path) {
  std::string code = ErrnoName(error);
  std::string message = std::string(syscall) + " " + code;
  if (path != nullptr) message += std::string(" ") + path;

  Napi::Error result = Napi::Error::New(env, message);
  Napi::Object fields = result.Value();
  fields.Set("code", code);
  fields.Set("errno", Napi::Number::New(env, error));
  fields.Set("syscall", syscall);
  if (path != nullptr) fields.Set("path", path);
  return result;
}

void ThrowNativeError(Napi::Env env, const char* syscall, int error, const char* path) {
  throw NativeError(env, syscall, error, path);
}

void ThrowTypeError(Napi::Env env, const std::string& message) {
  throw Napi::TypeError::New(env, message);
}

}  // namespace mos
