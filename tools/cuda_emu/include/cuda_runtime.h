// <cuda_runtime.h> of the CUDA emulation build: CUDA's own runtime API header for the types, and the
// emulator for everything a kernel file uses on the device side. Found before CUDA's include folder.
#pragma once
#include <cuda_runtime_api.h>

#include "dlk_emu/emu.h"
