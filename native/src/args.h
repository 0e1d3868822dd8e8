// Argument checks shared by the addon's functions. A value that breaks the contract in
// native/types.ts throws a TypeError before any syscall runs.
#pragma once

#include <napi.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "errors.h"

namespace mos {

// A JS number that is an integer within [min, max].
inline int64_t RequireInteger(Napi::Value value, const char* what, int64_t min, int64_t max) {
  if (!value.IsNumber()) ThrowTypeError(value.Env(), std::string(what) + " must be a number");
  double number = value.As<Napi::Number>().DoubleValue();
  if (std::trunc(number) != number || number < static_cast<double>(min) ||
      number > static_cast<double>(max)) {
    ThrowTypeError(value.Env(), std::string(what) + " must be an integer in [" +
                                    std::to_string(min) + ", " + std::to_string(max) + "]");
  }
  return static_cast<int64_t>(number);
}

inline int RequireFd(Napi::Value value, const char* what) {
  return static_cast<int>(RequireInteger(value, what, 0, INT32_MAX));
}

// A string that can become a C string: an embedded NUL would silently cut it short.
inline std::string RequireString(Napi::Value value, const char* what) {
  if (!value.IsString()) ThrowTypeError(value.Env(), std::string(what) + " must be a string");
  std::string text = value.As<Napi::String>().Utf8Value();
  if (text.find('\0') != std::string::npos) {
    ThrowTypeError(value.Env(), std::string(what) + " must not contain NUL");
  }
  return text;
}

inline bool RequireBoolean(Napi::Value value, const char* what) {
  if (!value.IsBoolean()) ThrowTypeError(value.Env(), std::string(what) + " must be a boolean");
  return value.As<Napi::Boolean>().Value();
}

inline Napi::Array RequireArray(Napi::Value value, const char* what) {
  if (!value.IsArray()) ThrowTypeError(value.Env(), std::string(what) + " must be an array");
  return value.As<Napi::Array>();
}

inline std::vector<std::string> RequireStringArray(Napi::Value value, const char* what) {
  Napi::Array array = RequireArray(value, what);
  std::vector<std::string> strings;
  strings.reserve(array.Length());
  for (uint32_t i = 0; i < array.Length(); i++) strings.push_back(RequireString(array[i], what));
  return strings;
}

inline Napi::Object RequireObject(Napi::Value value, const char* what) {
  if (!value.IsObject()) ThrowTypeError(value.Env(), std::string(what) + " must be an object");
  return value.As<Napi::Object>();
}

// Optional properties: undefined and null both mean "not given".
inline bool IsAbsent(Napi::Value value) { return value.IsUndefined() || value.IsNull(); }

}  // namespace mos
