// Shared declarations of the scatter/gather ops (CPU in scatter.cpp, CUDA in scatter_cuda.cu).
//
// Rows are predicted K x K kernels, one per (layer, filter, channel) of the predicted conv weights,
// in destination order (see nernfast/plan.py). The flat buffer holds every predicted conv weight
// back to back, layer l at buf_offsets[l], its kernels k_l x k_l (k_l <= K). Destination row d of
// layer l (row_offsets[l] <= d < row_offsets[l+1]) occupies the k_l*k_l elements at
//     buf_offsets[l] + (d - row_offsets[l]) * k_l * k_l
// and holds the centre window of its K x K row: rows[d, (i + lo) * K + (j + lo)], lo = (K - k_l) / 2.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace nernfast {

// Raw views of the three int64 layout tensors (on the device of the data they describe).
struct Layout {
  const int64_t* row_offsets;   // (L + 1,) first destination row of each layer; row_offsets[L] = N
  const int64_t* buf_offsets;   // (L + 1,) first flat element of each layer;    buf_offsets[L] = numel
  const int64_t* kernel_sizes;  // (L,)     k_l
  int64_t num_layers;           // L
  int64_t K;                    // the rows' kernel size (rows have K * K columns)
};

#ifdef NERNFAST_WITH_CUDA
// CUDA launchers. Inputs are validated, contiguous and on the current device; `index` may be null
// (row m is destination row m). `flat`/`rows` outputs are written only inside each crop (scatter)
// or completely (gather: zeros outside the crop).
void scatter_rows_cuda(const at::Tensor& rows, const Layout& layout, const int64_t* index, at::Tensor& flat);
void gather_rows_cuda(const at::Tensor& flat, const Layout& layout, const int64_t* index, at::Tensor& rows);
#endif

}  // namespace nernfast
