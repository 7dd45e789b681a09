// CUDA kernels of the scatter/gather ops (validation, dtype checks and the device guard are in
// scatter.cpp). One thread per element of a K x K row: m = e / (K*K), q = e % (K*K); the thread
// finds its destination row's layer by binary search over row_offsets (a few dozen layers, cached)
// and moves one element when q lies inside the layer's centre crop (gather writes 0 outside it).
// Offsets are 64-bit throughout; out-of-range layouts or indices trip device asserts.
#include <algorithm>
#include <cstdint>

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>

#include "scatter.h"

namespace nernfast {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int64_t layer_of(const int64_t* __restrict__ ro, int64_t L, int64_t d) {
  int64_t lo = 0, hi = L;  // first l with ro[l + 1] > d
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (__ldg(ro + mid + 1) > d)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

// kScatter: rows (M, K*K) -> flat; else flat -> rows (M, K*K) with zeros outside the crop.
template <typename T, bool kScatter>
__global__ void rows_flat_kernel(const T* __restrict__ src, T* __restrict__ dst, Layout lay,
                                 const int64_t* __restrict__ index, int64_t num_input_rows, int64_t flat_numel) {
  const int64_t K = lay.K, KK = K * K, total = num_input_rows * KK;
  const int64_t N = __ldg(lay.row_offsets + lay.num_layers);
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = e / KK, q = e - m * KK;
    const int64_t d = index != nullptr ? __ldg(index + m) : m;
    CUDA_KERNEL_ASSERT(d >= 0 && d < N && "nernfast: destination row outside the layout");
    const int64_t l = layer_of(lay.row_offsets, lay.num_layers, d);
    const int64_t k = __ldg(lay.kernel_sizes + l), lo = (K - k) / 2;
    const int64_t i = q / K - lo, j = q % K - lo;
    const bool inside = i >= 0 && i < k && j >= 0 && j < k;
    const int64_t f = __ldg(lay.buf_offsets + l) + (d - __ldg(lay.row_offsets + l)) * k * k + i * k + j;
    if (inside) CUDA_KERNEL_ASSERT(f < flat_numel && "nernfast: layout points past the flat buffer");
    if (kScatter) {
      if (inside) dst[f] = src[e];
    } else {
      dst[e] = inside ? src[f] : T(0);
    }
  }
}

template <bool kScatter>
void launch(const at::Tensor& src, at::Tensor& dst, const Layout& lay, const int64_t* index, int64_t rows,
            int64_t flat_numel, int64_t esize) {
  const int64_t total = rows * lay.K * lay.K;
  if (total == 0) return;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(1) << 20);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const void* s = src.const_data_ptr();
  void* d = dst.mutable_data_ptr();
  switch (esize) {
    case 2:
      rows_flat_kernel<uint16_t, kScatter><<<blocks, kThreads, 0, stream>>>(
          static_cast<const uint16_t*>(s), static_cast<uint16_t*>(d), lay, index, rows, flat_numel);
      break;
    case 4:
      rows_flat_kernel<uint32_t, kScatter><<<blocks, kThreads, 0, stream>>>(
          static_cast<const uint32_t*>(s), static_cast<uint32_t*>(d), lay, index, rows, flat_numel);
      break;
    default:
      rows_flat_kernel<uint64_t, kScatter><<<blocks, kThreads, 0, stream>>>(
          static_cast<const uint64_t*>(s), static_cast<uint64_t*>(d), lay, index, rows, flat_numel);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void scatter_rows_cuda(const at::Tensor& rows, const Layout& layout, const int64_t* index, at::Tensor& flat) {
  launch<true>(rows, flat, layout, index, rows.size(0), flat.numel(), rows.element_size());
}

void gather_rows_cuda(const at::Tensor& flat, const Layout& layout, const int64_t* index, at::Tensor& rows) {
  launch<false>(flat, rows, layout, index, rows.size(0), flat.numel(), flat.element_size());
}

}  // namespace nernfast
