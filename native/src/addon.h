// Each area of the addon adds its functions to the module's exports.
#pragma once

#include <napi.h>

namespace mos {

void RegisterSpawn(Napi::Env env, Napi::Object exports);
void RegisterReap(Napi::Env env, Napi::Object exports);
void RegisterSocket(Napi::Env env, Napi::Object exports);
void RegisterPoll(Napi::Env env, Napi::Object exports);
void RegisterMount(Napi::Env env, Napi::Object exports);
void RegisterBoot(Napi::Env env, Napi::Object exports);
void RegisterBlock(Napi::Env env, Napi::Object exports);
void RegisterIdmap(Napi::Env env, Napi::Object exports);
void RegisterTpm(Napi::Env env, Napi::Object exports);

}  // namespace mos
