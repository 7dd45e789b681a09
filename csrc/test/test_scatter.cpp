// C++ test of torch.ops.nernfast.{scatter_rows, gather_rows, scatter_rows_into} (run by ctest):
// the CPU kernels against a naive loop in every supported dtype, with and without a row index,
// gather as scatter's adjoint (the pair the autograd formulas in nernfast/_ext.py rely on), and a
// readable error for a bad dtype.
#include <cstdio>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

struct Layer {
  int64_t c_out, c_in, k;
};

const std::vector<Layer> kLayers = {{4, 3, 3}, {5, 4, 1}, {2, 5, 3}, {3, 2, 1}};
constexpr int64_t K = 3;

struct Plan {
  Tensor row_offsets, buf_offsets, kernel_sizes;
  int64_t num_rows = 0, numel = 0;
};

Plan make_plan() {
  std::vector<int64_t> ro{0}, bo{0}, ks;
  for (const auto& l : kLayers) {
    ro.push_back(ro.back() + l.c_out * l.c_in);
    bo.push_back(bo.back() + l.c_out * l.c_in * l.k * l.k);
    ks.push_back(l.k);
  }
  auto opts = at::TensorOptions().dtype(at::kLong);
  Plan p;
  p.row_offsets = at::tensor(ro, opts);
  p.buf_offsets = at::tensor(bo, opts);
  p.kernel_sizes = at::tensor(ks, opts);
  p.num_rows = ro.back();
  p.numel = bo.back();
  return p;
}

// Naive scatter of `rows` (float64) whose row m goes to destination row dest[m].
Tensor naive_scatter(const Tensor& rows, const std::vector<int64_t>& dest, const Plan& p) {
  Tensor flat = at::zeros({p.numel}, rows.options());
  auto r = rows.accessor<double, 2>();
  auto f = flat.accessor<double, 1>();
  for (int64_t m = 0; m < rows.size(0); ++m) {
    const int64_t d = dest[m];
    int64_t l = 0, row0 = 0, buf0 = 0;
    while (d >= row0 + kLayers[l].c_out * kLayers[l].c_in) {
      row0 += kLayers[l].c_out * kLayers[l].c_in;
      buf0 += kLayers[l].c_out * kLayers[l].c_in * kLayers[l].k * kLayers[l].k;
      ++l;
    }
    const int64_t k = kLayers[l].k, lo = (K - k) / 2;
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) f[buf0 + (d - row0) * k * k + i * k + j] = r[m][(i + lo) * K + j + lo];
  }
  return flat;
}

const auto& scatter_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("nernfast::scatter_rows", "")
                             .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                           const OptTensor&, c10::SymInt)>();
  return op;
}

const auto& gather_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("nernfast::gather_rows", "")
                             .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                           const OptTensor&, c10::SymInt, int64_t)>();
  return op;
}

const auto& scatter_into_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("nernfast::scatter_rows_into", "")
                             .typed<void(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                         const OptTensor&, const Tensor&)>();
  return op;
}

void test_dtypes_and_index(const Plan& p) {
  std::vector<int64_t> identity(p.num_rows), reversed(p.num_rows);
  for (int64_t d = 0; d < p.num_rows; ++d) identity[d] = d, reversed[d] = p.num_rows - 1 - d;
  const Tensor rows64 = at::randn({p.num_rows, K * K}, at::kDouble);
  for (auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    const std::string name = c10::toString(dtype);
    const Tensor rows = rows64.to(dtype);
    const Tensor exact = rows.to(at::kDouble);  // the values the op must move unchanged
    Tensor flat = scatter_op().call(rows, p.row_offsets, p.buf_offsets, p.kernel_sizes, std::nullopt, p.numel);
    expect(at::equal(flat.to(at::kDouble), naive_scatter(exact, identity, p)), "scatter_rows " + name);

    const Tensor index = at::tensor(reversed, at::TensorOptions().dtype(at::kLong));
    Tensor flat_r = scatter_op().call(rows, p.row_offsets, p.buf_offsets, p.kernel_sizes, index, p.numel);
    expect(at::equal(flat_r.to(at::kDouble), naive_scatter(exact, reversed, p)), "scatter_rows with index " + name);

    Tensor into = at::full({p.numel}, 7.0, rows.options());
    scatter_into_op().call(rows, p.row_offsets, p.buf_offsets, p.kernel_sizes, std::nullopt, into);
    expect(at::equal(into, flat), "scatter_rows_into " + name);

    // gather is the adjoint: <scatter(r), f> == <r, gather(f)> (exact in float64)
    if (dtype == at::kDouble) {
      const Tensor f = at::randn({p.numel}, at::kDouble);
      Tensor g = gather_op().call(f, p.row_offsets, p.buf_offsets, p.kernel_sizes, std::nullopt, p.num_rows, K);
      const double lhs = (flat * f).sum().item<double>(), rhs = (rows * g).sum().item<double>();
      expect(std::abs(lhs - rhs) <= 1e-12 * (1 + std::abs(lhs)), "gather_rows is the adjoint of scatter_rows");
      Tensor back = scatter_op().call(g, p.row_offsets, p.buf_offsets, p.kernel_sizes, std::nullopt, p.numel);
      expect(at::equal(back, f), "scatter(gather(flat)) == flat");
    }
  }
}

void test_errors(const Plan& p) {
  Tensor rows = at::zeros({p.num_rows, K * K}, at::kInt);
  std::string message;
  try {
    scatter_op().call(rows, p.row_offsets, p.buf_offsets, p.kernel_sizes, std::nullopt, p.numel);
  } catch (const c10::Error& e) {
    message = e.what_without_backtrace();
  }
  expect(message.find("rows must be float32, float64, float16 or bfloat16, got Int") != std::string::npos,
         "int rows: '" + message.substr(0, message.find('\n')) + "'");
}

}  // namespace

int main() {
  at::manual_seed(0);
  const Plan p = make_plan();
  test_dtypes_and_index(p);
  test_errors(p);
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
  return failures ? 1 : 0;
}
