// Stand-in for the CUDA runtime header: just the types halut_cuda.h names, so the kernels compile as C++.
#pragma once
#include <cstdint>
typedef int cudaError_t;
typedef struct CUstream_st* cudaStream_t;
