// nernfast ops: predicted rows (M, K*K) <-> the flat buffer of all predicted conv weights.
//
//   torch.ops.nernfast.scatter_rows(rows, row_offsets, buf_offsets, kernel_sizes, index, numel) -> flat
//       Row m goes to destination row d = index[m] (d = m when index is None), centre-cropped to its
//       layer's k_l x k_l. Without index, rows must hold all N rows (every element is written);
//       with index, the flat elements of rows not named in index are 0. Backward: gather_rows.
//   torch.ops.nernfast.gather_rows(flat, row_offsets, buf_offsets, kernel_sizes, index, num_rows, kernel_size) -> rows
//       The adjoint: rows[m] = destination row index[m] (or m) embedded in a K x K row, zeros outside
//       the crop. Output (num_rows, K*K). Backward: scatter_rows.
//   torch.ops.nernfast.scatter_rows_into(rows, row_offsets, buf_offsets, kernel_sizes, index, flat) -> ()
//       scatter_rows written in place into an existing flat buffer (the bound conv weights); flat
//       elements of rows not written stay as they are. Not differentiable.
//
// Layout tensors are int64 on the data's device (see scatter.h); index entries must be distinct
// destination rows in [0, N). On the CPU every value is checked; on CUDA the layout values are not
// read back (that would synchronise) and the kernels check bounds with device asserts.
// Supported dtypes: float32, float64, float16, bfloat16 (the ops only move bits: a copy dispatches
// on the element size). Autograd formulas and fake kernels: nernfast/_ext.py.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "scatter.h"

namespace nernfast {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// ---- validation ---------------------------------------------------------------------------------

int64_t element_size(const char* op, const char* what, const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return 4;
    case at::kDouble: return 8;
    case at::kHalf:
    case at::kBFloat16: return 2;
    default:
      TORCH_CHECK(false, op, ": ", what, " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
  }
  return 0;
}

void check_contiguous(const char* op, const char* what, const Tensor& t) {
  TORCH_CHECK(t.is_contiguous(), op, ": ", what, " must be contiguous, got shape ", t.sizes(), " with strides ",
              t.strides(), "; call .contiguous() first");
}

void check_same_device(const char* op, const char* what, const Tensor& t, const char* ref_what, const Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", what, " is on ", t.device(), " but ", ref_what, " is on ",
              ref.device(), "; move them to one device");
}

void check_int64_vector(const char* op, const char* what, const Tensor& t, const char* ref_what, const Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == at::kLong, op, ": ", what, " must be int64, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1, op, ": ", what, " must be 1-D, got shape ", t.sizes());
  check_contiguous(op, what, t);
  check_same_device(op, what, t, ref_what, ref);
}

// K of (M, K*K) rows.
int64_t rows_kernel_size(const char* op, const Tensor& rows) {
  TORCH_CHECK(rows.dim() == 2, op, ": rows must be 2-D (M, K*K), got shape ", rows.sizes());
  const int64_t kk = rows.size(1);
  const auto k = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(kk))));
  TORCH_CHECK(kk >= 1 && k * k == kk, op, ": rows must have K*K columns for an integer K, got shape ", rows.sizes());
  return k;
}

struct Checked {
  Layout layout;
  int64_t num_rows = -1;  // N (known on the CPU only)
  int64_t numel = -1;     // flat elements (known on the CPU only)
};

Checked check_layout(const char* op, const Tensor& data, const char* data_what, const Tensor& row_offsets,
                     const Tensor& buf_offsets, const Tensor& kernel_sizes, int64_t K) {
  check_int64_vector(op, "row_offsets", row_offsets, data_what, data);
  check_int64_vector(op, "buf_offsets", buf_offsets, data_what, data);
  check_int64_vector(op, "kernel_sizes", kernel_sizes, data_what, data);
  const int64_t L = kernel_sizes.size(0);
  TORCH_CHECK(row_offsets.size(0) == L + 1 && buf_offsets.size(0) == L + 1, op,
              ": row_offsets and buf_offsets need one more entry than kernel_sizes (", L, " layers), got ",
              row_offsets.size(0), " and ", buf_offsets.size(0));
  Checked c;
  c.layout = {row_offsets.data_ptr<int64_t>(), buf_offsets.data_ptr<int64_t>(), kernel_sizes.data_ptr<int64_t>(), L,
              K};
  if (!data.is_cpu()) return c;
  const int64_t* ro = c.layout.row_offsets;
  const int64_t* bo = c.layout.buf_offsets;
  const int64_t* ks = c.layout.kernel_sizes;
  TORCH_CHECK(ro[0] == 0 && bo[0] == 0, op, ": row_offsets and buf_offsets must start at 0, got ", ro[0], " and ",
              bo[0]);
  for (int64_t l = 0; l < L; ++l) {
    TORCH_CHECK(ks[l] >= 1 && ks[l] <= K, op, ": kernel_sizes[", l, "] = ", ks[l], " is outside [1, K = ", K,
                "] (K from the rows' K*K columns)");
    TORCH_CHECK(ro[l + 1] >= ro[l], op, ": row_offsets must be non-decreasing, got ", ro[l], " then ", ro[l + 1],
                " at layer ", l);
    TORCH_CHECK(bo[l + 1] - bo[l] == (ro[l + 1] - ro[l]) * ks[l] * ks[l], op, ": layer ", l, " has ",
                ro[l + 1] - ro[l], " rows of ", ks[l], "x", ks[l], " but buf_offsets give it ", bo[l + 1] - bo[l],
                " elements");
  }
  c.num_rows = ro[L];
  c.numel = bo[L];
  return c;
}

// Validates the optional destination-row index; returns its data pointer or nullptr.
const int64_t* check_index(const char* op, const OptTensor& index, const Tensor& data, const char* data_what,
                           int64_t expected_len, const Checked& c, bool distinct) {
  if (!index.has_value() || !index->defined()) return nullptr;
  const Tensor& idx = *index;
  check_int64_vector(op, "index", idx, data_what, data);
  TORCH_CHECK(idx.size(0) == expected_len, op, ": index must have one entry per row (", expected_len, "), got ",
              idx.size(0));
  const int64_t* p = idx.data_ptr<int64_t>();
  if (data.is_cpu()) {
    std::vector<uint8_t> seen(distinct ? c.num_rows : 0, 0);
    for (int64_t m = 0; m < expected_len; ++m) {
      TORCH_CHECK(p[m] >= 0 && p[m] < c.num_rows, op, ": index[", m, "] = ", p[m],
                  " is not a destination row of the layout [0, ", c.num_rows, ")");
      if (distinct) {
        TORCH_CHECK(!seen[p[m]], op, ": index names destination row ", p[m],
                    " twice; index entries must be distinct");
        seen[p[m]] = 1;
      }
    }
  }
  return p;
}

bool poison_outputs() {  // debug knob: NERNFAST_POISON=1 fills outputs with NaN before the kernel writes them
  const char* v = std::getenv("NERNFAST_POISON");
  return v != nullptr && v[0] != '\0' && !(v[0] == '0' && v[1] == '\0');
}

// ---- CPU kernels (element type = an unsigned integer of the element's size: the ops only move bits) ----

inline int64_t layer_of(const Layout& lay, int64_t d) {  // first l with row_offsets[l + 1] > d
  const int64_t* ro = lay.row_offsets;
  return std::upper_bound(ro + 1, ro + lay.num_layers + 1, d) - (ro + 1);
}

template <typename T>
inline void crop_rows(const T* src, T* dst, int64_t n, int64_t K, int64_t k) {
  const int64_t KK = K * K, lo = (K - k) / 2, kk = k * k;
  if (k == 1) {
    const int64_t c = lo * K + lo;
    for (int64_t r = 0; r < n; ++r) dst[r] = src[r * KK + c];
    return;
  }
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < k; ++i) {
      const T* s = src + r * KK + (i + lo) * K + lo;
      T* t = dst + r * kk + i * k;
      for (int64_t j = 0; j < k; ++j) t[j] = s[j];
    }
}

template <typename T>
inline void embed_rows(const T* src, T* dst, int64_t n, int64_t K, int64_t k) {  // adjoint of crop_rows
  const int64_t KK = K * K, lo = (K - k) / 2, kk = k * k;
  std::fill(dst, dst + n * KK, T(0));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < k; ++i) {
      const T* s = src + r * kk + i * k;
      T* t = dst + r * KK + (i + lo) * K + lo;
      for (int64_t j = 0; j < k; ++j) t[j] = s[j];
    }
}

// Visit rows [begin, end) as maximal runs inside one layer (no index), or one by one (index).
// f(layer, first input row, first destination row, count).
template <typename F>
inline void for_each_run(const Layout& lay, const int64_t* index, int64_t begin, int64_t end, F&& f) {
  if (index != nullptr) {
    for (int64_t m = begin; m < end; ++m) f(layer_of(lay, index[m]), m, index[m], int64_t(1));
    return;
  }
  int64_t l = layer_of(lay, begin);
  for (int64_t m = begin; m < end;) {
    while (lay.row_offsets[l + 1] <= m) ++l;
    const int64_t stop = std::min(end, lay.row_offsets[l + 1]);
    f(l, m, m, stop - m);
    m = stop;
  }
}

inline int64_t grain_rows(int64_t K) { return std::max<int64_t>(1, 32768 / (K * K)); }

template <typename T>
void scatter_cpu(const Tensor& rows, const Layout& lay, const int64_t* index, Tensor& flat) {
  const T* src = static_cast<const T*>(rows.const_data_ptr());
  T* dst = static_cast<T*>(flat.mutable_data_ptr());
  const int64_t K = lay.K, KK = K * K;
  at::parallel_for(0, rows.size(0), grain_rows(K), [&](int64_t begin, int64_t end) {
    for_each_run(lay, index, begin, end, [&](int64_t l, int64_t m, int64_t d, int64_t n) {
      const int64_t k = lay.kernel_sizes[l];
      T* out = dst + lay.buf_offsets[l] + (d - lay.row_offsets[l]) * k * k;
      if (k == K)
        std::memcpy(out, src + m * KK, n * KK * sizeof(T));
      else
        crop_rows(src + m * KK, out, n, K, k);
    });
  });
}

template <typename T>
void gather_cpu(const Tensor& flat, const Layout& lay, const int64_t* index, Tensor& rows) {
  const T* src = static_cast<const T*>(flat.const_data_ptr());
  T* dst = static_cast<T*>(rows.mutable_data_ptr());
  const int64_t K = lay.K, KK = K * K;
  at::parallel_for(0, rows.size(0), grain_rows(K), [&](int64_t begin, int64_t end) {
    for_each_run(lay, index, begin, end, [&](int64_t l, int64_t m, int64_t d, int64_t n) {
      const int64_t k = lay.kernel_sizes[l];
      const T* in = src + lay.buf_offsets[l] + (d - lay.row_offsets[l]) * k * k;
      if (k == K)
        std::memcpy(dst + m * KK, in, n * KK * sizeof(T));
      else
        embed_rows(in, dst + m * KK, n, K, k);
    });
  });
}

template <template <typename> class Kernel>
void by_element_size(int64_t size, const Tensor& in, const Layout& lay, const int64_t* index, Tensor& out) {
  switch (size) {
    case 2: return Kernel<uint16_t>::run(in, lay, index, out);
    case 4: return Kernel<uint32_t>::run(in, lay, index, out);
    default: return Kernel<uint64_t>::run(in, lay, index, out);
  }
}
template <typename T>
struct ScatterCpu {
  static void run(const Tensor& a, const Layout& l, const int64_t* i, Tensor& b) { scatter_cpu<T>(a, l, i, b); }
};
template <typename T>
struct GatherCpu {
  static void run(const Tensor& a, const Layout& l, const int64_t* i, Tensor& b) { gather_cpu<T>(a, l, i, b); }
};

void run_scatter(const char* op, int64_t esize, const Tensor& rows, const Layout& lay, const int64_t* index,
                 Tensor& flat) {
  if (rows.numel() == 0) return;
  if (rows.is_cpu()) return by_element_size<ScatterCpu>(esize, rows, lay, index, flat);
#ifdef NERNFAST_WITH_CUDA
  if (rows.is_cuda()) {
    c10::DeviceGuard guard(rows.device());
    return scatter_rows_cuda(rows, lay, index, flat);
  }
#endif
  TORCH_CHECK(false, op, ": no kernel for device ", rows.device(), " (this build has CPU",
#ifdef NERNFAST_WITH_CUDA
              " and CUDA",
#endif
              " kernels)");
}

void run_gather(const char* op, int64_t esize, const Tensor& flat, const Layout& lay, const int64_t* index,
                Tensor& rows) {
  if (rows.numel() == 0) return;
  if (flat.is_cpu()) return by_element_size<GatherCpu>(esize, flat, lay, index, rows);
#ifdef NERNFAST_WITH_CUDA
  if (flat.is_cuda()) {
    c10::DeviceGuard guard(flat.device());
    return gather_rows_cuda(flat, lay, index, rows);
  }
#endif
  TORCH_CHECK(false, op, ": no kernel for device ", flat.device());
}

// ---- the ops (one implementation for CPU and CUDA; the device only changes what can be checked) ----

Tensor scatter_rows(const Tensor& rows, const Tensor& row_offsets, const Tensor& buf_offsets,
                    const Tensor& kernel_sizes, const OptTensor& index, int64_t numel) {
  const char* op = "nernfast.scatter_rows";
  const int64_t K = rows_kernel_size(op, rows);
  const int64_t esize = element_size(op, "rows", rows);
  check_contiguous(op, "rows", rows);
  const Checked c = check_layout(op, rows, "rows", row_offsets, buf_offsets, kernel_sizes, K);
  const int64_t* idx = check_index(op, index, rows, "rows", rows.size(0), c, /*distinct=*/true);
  TORCH_CHECK(numel >= 0, op, ": numel must be >= 0, got ", numel);
  if (rows.is_cpu()) {
    TORCH_CHECK(numel == c.numel, op, ": numel = ", numel, " but the layout's buf_offsets end at ", c.numel);
    TORCH_CHECK(idx != nullptr || rows.size(0) == c.num_rows, op, ": without index, rows must hold all ",
                c.num_rows, " destination rows, got ", rows.size(0));
  }
  Tensor flat = idx != nullptr ? at::zeros({numel}, rows.options()) : at::empty({numel}, rows.options());
  if (idx == nullptr && poison_outputs()) flat.fill_(std::numeric_limits<double>::quiet_NaN());
  run_scatter(op, esize, rows, c.layout, idx, flat);
  return flat;
}

Tensor gather_rows(const Tensor& flat, const Tensor& row_offsets, const Tensor& buf_offsets,
                   const Tensor& kernel_sizes, const OptTensor& index, int64_t num_rows, int64_t kernel_size) {
  const char* op = "nernfast.gather_rows";
  TORCH_CHECK(flat.dim() == 1, op, ": flat must be 1-D, got shape ", flat.sizes());
  TORCH_CHECK(kernel_size >= 1, op, ": kernel_size must be >= 1, got ", kernel_size);
  TORCH_CHECK(num_rows >= 0, op, ": num_rows must be >= 0, got ", num_rows);
  const int64_t esize = element_size(op, "flat", flat);
  check_contiguous(op, "flat", flat);
  const Checked c = check_layout(op, flat, "flat", row_offsets, buf_offsets, kernel_sizes, kernel_size);
  const int64_t* idx = check_index(op, index, flat, "flat", num_rows, c, /*distinct=*/false);
  if (flat.is_cpu()) {
    TORCH_CHECK(flat.size(0) == c.numel, op, ": flat has ", flat.size(0), " elements but the layout's buf_offsets end at ",
                c.numel);
    TORCH_CHECK(idx != nullptr || num_rows == c.num_rows, op, ": without index, num_rows must be all ", c.num_rows,
                " destination rows, got ", num_rows);
  }
  Tensor rows = at::empty({num_rows, kernel_size * kernel_size}, flat.options());
  if (poison_outputs()) rows.fill_(std::numeric_limits<double>::quiet_NaN());
  run_gather(op, esize, flat, c.layout, idx, rows);
  return rows;
}

void scatter_rows_into(const Tensor& rows, const Tensor& row_offsets, const Tensor& buf_offsets,
                       const Tensor& kernel_sizes, const OptTensor& index, const Tensor& flat) {
  const char* op = "nernfast.scatter_rows_into";
  const int64_t K = rows_kernel_size(op, rows);
  const int64_t esize = element_size(op, "rows", rows);
  check_contiguous(op, "rows", rows);
  TORCH_CHECK(flat.dim() == 1, op, ": flat must be 1-D, got shape ", flat.sizes());
  TORCH_CHECK(flat.scalar_type() == rows.scalar_type(), op, ": flat is ", flat.scalar_type(), " but rows are ",
              rows.scalar_type(), "; convert the rows to the buffer's dtype");
  check_contiguous(op, "flat", flat);
  check_same_device(op, "flat", flat, "rows", rows);
  const Checked c = check_layout(op, rows, "rows", row_offsets, buf_offsets, kernel_sizes, K);
  const int64_t* idx = check_index(op, index, rows, "rows", rows.size(0), c, /*distinct=*/true);
  if (rows.is_cpu()) {
    TORCH_CHECK(flat.size(0) == c.numel, op, ": flat has ", flat.size(0), " elements but the layout's buf_offsets end at ",
                c.numel);
    TORCH_CHECK(idx != nullptr || rows.size(0) == c.num_rows, op, ": without index, rows must hold all ",
                c.num_rows, " destination rows, got ", rows.size(0));
  }
  Tensor out = flat;
  run_scatter(op, esize, rows, c.layout, idx, out);
}

// ---- autograd ------------------------------------------------------------------------------------
// scatter_rows and gather_rows are each other's adjoint; their autograd formulas are registered from
// Python (nernfast/_ext.py, torch.library.register_autograd), which keeps this file free of the
// autograd headers: it compiles in ~9 s instead of ~24 s of CPU time. Only the in-place op has an
// Autograd kernel here, which refuses autograd and bumps the buffer's version counter.

void scatter_rows_into_autograd(const Tensor& rows, const Tensor& row_offsets, const Tensor& buf_offsets,
                                const Tensor& kernel_sizes, const OptTensor& index, const Tensor& flat) {
  TORCH_CHECK(!(c10::GradMode::is_enabled() && (rows.requires_grad() || flat.requires_grad())),
              "nernfast.scatter_rows_into writes in place and is not differentiable: call it under torch.no_grad() "
              "(or use scatter_rows, which is)");
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("nernfast::scatter_rows_into", "")
                             .typed<void(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                         const Tensor&)>();
  {
    c10::impl::ExcludeDispatchKeyGuard below_autograd(c10::autograd_dispatch_keyset_with_ADInplaceOrView);
    op.call(rows, row_offsets, buf_offsets, kernel_sizes, index, flat);
  }
  flat.unsafeGetTensorImpl()->bump_version();
}

}  // namespace

TORCH_LIBRARY(nernfast, m) {
  m.def("scatter_rows(Tensor rows, Tensor row_offsets, Tensor buf_offsets, Tensor kernel_sizes, Tensor? index, "
        "SymInt numel) -> Tensor");
  m.def("gather_rows(Tensor flat, Tensor row_offsets, Tensor buf_offsets, Tensor kernel_sizes, Tensor? index, "
        "SymInt num_rows, int kernel_size) -> Tensor");
  m.def("scatter_rows_into(Tensor rows, Tensor row_offsets, Tensor buf_offsets, Tensor kernel_sizes, Tensor? index, "
        "Tensor(a!) flat) -> ()");
}

TORCH_LIBRARY_IMPL(nernfast, CPU, m) {
  m.impl("scatter_rows", &scatter_rows);
  m.impl("gather_rows", &gather_rows);
  m.impl("scatter_rows_into", &scatter_rows_into);
}

#ifdef NERNFAST_WITH_CUDA
TORCH_LIBRARY_IMPL(nernfast, CUDA, m) {
  m.impl("scatter_rows", &scatter_rows);
  m.impl("gather_rows", &gather_rows);
  m.impl("scatter_rows_into", &scatter_rows_into);
}
#endif

TORCH_LIBRARY_IMPL(nernfast, Autograd, m) { m.impl("scatter_rows_into", &scatter_rows_into_autograd); }

}  // namespace nernfast
