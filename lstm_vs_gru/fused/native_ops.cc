// TensorFlow ops in C++ for the fused trainer (lstm_vs_gru/fused/trainer.py), built on first use by
// lstm_vs_gru/fused/native_ops.py against the installed TensorFlow.
//
// ExactSparseAdam: keras.optimizers.Adam's update of a whole embedding table from a sparse gradient, as
// ExactAdam.apply_sparse computes it (every row moves every step), in one pass over the table on all of
// TensorFlow's intra-op threads. XLA makes three passes of it, one per variable (m, v, then the weights),
// and reads and writes 80 MB a step for the lab's table instead of 60 (bench/README.md, adam_cost.py).
//
//   per row r, with g and g2 the sums over r's occurrences of the gradient rows and of their squares
//   (zero for rows no occurrence touches):
//     m += (g - m) * (1 - beta_1);  v += (g2 - v) * (1 - beta_2);  var -= m * alpha / (sqrt(v) + epsilon)
//
// The sums run in occurrence order and each row's update is independent of the others: the same inputs
// give the same bits whatever the thread count.
//
// LstmForwardLoop and LstmBackwardLoop: the LSTM's two loops of trainer.lstm_recurrence, for use inside
// its XLA program: XLA lowers each op to a call of this code (an XLA FFI custom call), where XLA's own loop
// dispatches a small matmul and a few element-wise kernels per step, and compiles a while loop of them.
// Outside XLA (the validation pass) the forward loop runs as a CPU kernel, its rows split over TensorFlow's
// threads. The forward loop is described below, before its code. The backward loop, per step t, from the last,
// with tc = tanh(cs[t]), i, f, g, o = gates[t] and c_prev = cs[t - 1] (zeros before the first step):
//
//   dh = d_hs[t] + dh_carry;  dc = dh * (o * (1 - tc * tc)) + dc_carry
//   dzs[t] = [dc * (g * i * (1 - i)), dc * (c_prev * f * (1 - f)), dc * (i * (1 - g * g)),
//             dh * (tc * o * (1 - o))]                                         (gate blocks of U)
//   dh_carry = dzs[t] @ R^T;  dc_carry = dc * f
//
// The matmuls sum in order (over the gates here, over the units in the forward loop), as XLA's dot does on
// this project's machine: there both loops gave XLA's loops' results bit for bit, and the lab's training did
// not change (tests/test_native_ops.py holds them to float rounding, which is what another CPU may give).
#define EIGEN_USE_THREADS

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/kernels/training_op_helpers.h"
#include "tensorflow/core/util/work_sharder.h"
#include "xla/ffi/api/ffi.h"
#include "xla/hlo/builder/xla_builder.h"

namespace xla::ffi {
const XLA_FFI_Api* GetXlaFfiApi();  // XLA's registry of FFI handlers, in libtensorflow_cc
}  // namespace xla::ffi

namespace lstm_vs_gru {

typedef float Vector __attribute__((vector_size(64)));  // 16 floats; the compiler splits it where need be
typedef float UnalignedVector __attribute__((vector_size(64), aligned(4)));
constexpr int kLanes = 16, kBlock = 10;

inline Vector Load(const float* p) { return *reinterpret_cast<const UnalignedVector*>(p); }
inline void Store(float* p, Vector v) { *reinterpret_cast<UnalignedVector*>(p) = v; }

// out (units, rows) = r (units, gates) @ dz (gates, rows), given rt = r^T (gates, units): a vector spans 16
// rows, so no horizontal sums; each output sums over the gates in order.
void RecurrentMatmul(const float* rt, const float* dz, float* out, int rows, int units, int gates) {
  int c = 0;
  for (; c + kLanes <= rows; c += kLanes) {
    int k = 0;
    for (; k + kBlock <= units; k += kBlock) {
      Vector acc[kBlock] = {};
      for (int j = 0; j < gates; ++j) {
        const Vector x = Load(dz + j * rows + c);
        const float* w = rt + j * units + k;
        for (int b = 0; b < kBlock; ++b) acc[b] += w[b] * x;
      }
      for (int b = 0; b < kBlock; ++b) Store(out + (k + b) * rows + c, acc[b]);
    }
    for (; k < units; ++k) {
      Vector acc = {};
      for (int j = 0; j < gates; ++j) acc += rt[j * units + k] * Load(dz + j * rows + c);
      Store(out + k * rows + c, acc);
    }
  }
  for (; c < rows; ++c) {
    for (int k = 0; k < units; ++k) {
      float sum = 0;
      for (int j = 0; j < gates; ++j) sum += rt[j * units + k] * dz[j * rows + c];
      out[k * rows + c] = sum;
    }
  }
}

// --- the LSTM's forward loop ---------------------------------------------------------------------------
// Per step, as trainer.lstm_recurrence's XLA loop computes it (Keras' arithmetic):
//
//   z = (xw[t] + h @ R) + b;  i, f, o = sigmoid(z[i], z[f], z[o]);  g = tanh(z[c])
//   c' = f * c + i * g;  h' = o * tanh(c')   ->  hs[t] = h', cs[t] = c', gates[t] = [i, f, g, o]
//
// sigmoid and tanh are XLA:CPU's own approximations, operation for operation (its exp: a Cephes polynomial,
// sigmoid(x) = 1 / (exp(-x) + 1); its tanh: a rational polynomial on x clamped to +-7.9988), written on whole
// vectors: written on scalars, the compiler specialised the clamped branch and folded its polynomial into
// constants without fused multiply-adds, one or two ulps off XLA's result. The compiler fuses multiply-adds
// where LLVM does for XLA; on this project's machine the loop gave XLA's loop's results bit for bit.

typedef int32_t IntVector __attribute__((vector_size(64)));

inline Vector Splat(float x) { return Vector{} + x; }

inline Vector Clamp(Vector x, float limit) {
  x = x < -limit ? Splat(-limit) : x;
  return x > limit ? Splat(limit) : x;
}

inline Vector Exp(Vector x) {
  x = x < -0x1.5f3334p+6f ? Splat(-0x1.5f3334p+6f) : x;  // -87.8 and 88.8: keeps 2^n a normal float
  x = x > 0x1.633334p+6f ? Splat(0x1.633334p+6f) : x;
  const Vector t = x * 0x1.715476p+0f + 0.5f;  // x * log2(e) + 1/2, whose floor is n (|t| < 2^23: exact)
  const Vector truncated = __builtin_convertvector(__builtin_convertvector(t, IntVector), Vector);
  const Vector n = Clamp(t < truncated ? truncated - 1.0f : truncated, 127.0f);
  Vector r = x - 0x1.63p-1f * n;  // x - n ln 2, in two parts
  r = r - -0x1.bd0106p-13f * n;
  Vector p = r * 0x1.a0d2cep-13f + 0x1.6e879cp-10f;
  p = p * r + 0x1.11121p-7f;
  p = p * r + 0x1.555382p-5f;
  p = p * r + 0x1.555554p-3f;
  p = p * r + 0.5f;
  const Vector y = 1.0f + (p * (r * r) + r);
  const IntVector exponent = (__builtin_convertvector(n, IntVector) + 127) << 23;
  Vector scale;
  __builtin_memcpy(&scale, &exponent, sizeof(scale));
  return y * scale;
}

inline Vector Sigmoid(Vector x) { return 1.0f / (Exp(-x) + 1.0f); }

inline Vector Tanh(Vector x) {
  const IntVector sign_mask = IntVector{} + 0x7fffffff;
  IntVector bits;
  __builtin_memcpy(&bits, &x, sizeof(bits));
  bits &= sign_mask;
  Vector magnitude;
  __builtin_memcpy(&magnitude, &bits, sizeof(magnitude));
  const Vector c = Clamp(x, 0x1.ffec88p+2f), c2 = c * c;
  Vector p = c2 * -0x1.3e4b8p-52f + 0x1.c266fcp-43f;
  p = c2 * p + -0x1.7a6ffep-34f;
  p = c2 * p + 0x1.b80082p-25f;
  p = c2 * p + 0x1.f28694p-17f;
  p = c2 * p + 0x1.4e1bdap-11f;
  p = c2 * p + 0x1.40b3b8p-8f;
  p = c * p;
  Vector q = c2 * 0x1.41a7bp-20f + 0x1.f12bacp-14f;
  q = c2 * q + 0x1.29540ap-9f;
  q = c2 * q + 0x1.40b3bap-8f;
  const Vector r = magnitude < 0x1.a36e2ep-12f ? x : p / q;  // tanh(x) = x to float precision below 4e-4
  return magnitude >= 20.0f ? (x < 0.0f ? Splat(-1.0f) : Splat(1.0f)) : r;
}

constexpr int kColumnBlock = 6;  // vectors of output columns per pass: 2 rows x 6 = 12 accumulators

// Output vectors [v0, v0 + kCount) of rows h0 and h1 (the same row when there is only one left).
template <int kCount>
inline void ForwardMatmulBlock(const float* h0, const float* h1, const float* r, float* out0, float* out1,
                               int64_t units, int64_t width, int64_t v0) {
  Vector a0[kCount] = {}, a1[kCount] = {};
  for (int64_t k = 0; k < units; ++k) {
    const float* w = r + k * width + v0 * kLanes;
    for (int b = 0; b < kCount; ++b) {
      const Vector x = Load(w + b * kLanes);
      a0[b] += h0[k] * x;
      a1[b] += h1[k] * x;
    }
  }
  for (int b = 0; b < kCount; ++b) {
    Store(out0 + (v0 + b) * kLanes, a0[b]);
    Store(out1 + (v0 + b) * kLanes, a1[b]);
  }
}

// out (rows, width) = h (rows, units) @ r (units, width), width a multiple of 16; each output sums over the
// units in order. The blocks have a fixed size, so that their accumulators stay in registers.
void ForwardMatmul(const float* h, const float* r, float* out, int64_t rows, int64_t units, int64_t width) {
  const int64_t vectors = width / kLanes;
  for (int64_t i = 0; i < rows; i += 2) {
    const int64_t next = i + 1 < rows ? i + 1 : i;
    const float *h0 = h + i * units, *h1 = h + next * units;
    float *out0 = out + i * width, *out1 = out + next * width;
    int64_t v0 = 0;
    for (; v0 + kColumnBlock <= vectors; v0 += kColumnBlock) {
      ForwardMatmulBlock<kColumnBlock>(h0, h1, r, out0, out1, units, width, v0);
    }
    for (; v0 < vectors; ++v0) ForwardMatmulBlock<1>(h0, h1, r, out0, out1, units, width, v0);
  }
}

// One block of 16 units of a row's gates and states, from its z (4 units, the bias added) and its previous
// cell c. Element-wise: a block may overlap the one before it, which it then writes again with the same values.
inline void LstmCellBlock(const float* z, const float* c, int64_t units, int64_t u, float* gates, float* c_new,
                          float* h_new) {
  const Vector i = Sigmoid(Load(z + u)), f = Sigmoid(Load(z + units + u));
  const Vector g = Tanh(Load(z + 2 * units + u)), o = Sigmoid(Load(z + 3 * units + u));
  const Vector cell = f * Load(c + u) + i * g;
  Store(gates + u, i);
  Store(gates + units + u, f);
  Store(gates + 2 * units + u, g);
  Store(gates + 3 * units + u, o);
  Store(c_new + u, cell);
  Store(h_new + u, o * Tanh(cell));
}

// A row's gates and states: whole vectors, the last one ending at the last unit; fewer than 16 units go
// through buffers of 16.
void LstmCell(const float* z, const float* c, int64_t units, float* gates, float* c_new, float* h_new) {
  if (units >= kLanes) {
    for (int64_t u = 0; u < units; u += kLanes) {
      LstmCellBlock(z, c, units, std::min(u, units - kLanes), gates, c_new, h_new);
    }
    return;
  }
  float z16[4 * kLanes] = {}, c16[kLanes] = {}, gates16[4 * kLanes], c_new16[kLanes], h_new16[kLanes];
  for (int j = 0; j < 4; ++j) std::copy(z + j * units, z + (j + 1) * units, z16 + j * kLanes);
  std::copy(c, c + units, c16);
  LstmCellBlock(z16, c16, kLanes, 0, gates16, c_new16, h_new16);
  for (int j = 0; j < 4; ++j) std::copy(gates16 + j * kLanes, gates16 + j * kLanes + units, gates + j * units);
  std::copy(c_new16, c_new16 + units, c_new);
  std::copy(h_new16, h_new16 + units, h_new);
}

// xw, gates (steps, rows, 4 units), hs, cs (steps, rows, units), r (units, 4 units), b (4 units); row-major.
// Rows [begin, end) only: the rows of a batch are independent, so parts of them can run on several threads.
void LstmForward(int64_t steps, int64_t rows, int64_t units, const float* xw, const float* r, const float* b,
                 float* hs, float* cs, float* gates, int64_t begin, int64_t end) {
  const int64_t width = 4 * units, padded = (width + kLanes - 1) / kLanes * kLanes, n = rows * units;
  const int64_t count = end - begin;
  std::vector<float> scratch(units * padded + count * padded + 2 * count * units, 0.0f);
  float* r_padded = scratch.data();  // r with zero columns up to a multiple of 16
  float* z = r_padded + units * padded;
  float* zeros = z + count * padded;  // h and c before the first step
  for (int64_t k = 0; k < units; ++k) std::copy(r + k * width, r + (k + 1) * width, r_padded + k * padded);
  for (int64_t t = 0; t < steps; ++t) {
    const float* h = t ? hs + (t - 1) * n + begin * units : zeros;
    const float* c = t ? cs + (t - 1) * n + begin * units : zeros + count * units;
    ForwardMatmul(h, r_padded, z, count, units, padded);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t row = begin + i;
      float* zi = z + i * padded;
      const float* x = xw + (t * rows + row) * width;
      for (int64_t j = 0; j < width; ++j) zi[j] = (x[j] + zi[j]) + b[j];
      LstmCell(zi, c + i * units, units, gates + (t * rows + row) * width, cs + t * n + row * units,
               hs + t * n + row * units);
    }
  }
}

// --- the LSTM's backward loop --------------------------------------------------------------------------
// One block of 16 units of a row at step t: from the gates [i, f, g, o], the cell c and the one before it,
// the factors the fused trainer's XLA code computes in bulk before its loop (the same operations, so the same
// bits: tanh is XLA's), then the loop's step. The carried cell gradient is read from one buffer and written
// to another, so that a block overlapping the one before it computes the same values again.
inline void LstmBackwardBlock(const float* gates, const float* c, const float* c_prev, const float* d_h,
                              const float* dh_carry, const float* dc_in, int64_t units, int64_t u, float* dz,
                              float* dc_out) {
  const Vector i = Load(gates + u), f = Load(gates + units + u);
  const Vector g = Load(gates + 2 * units + u), o = Load(gates + 3 * units + u);
  const Vector tc = Tanh(Load(c + u));
  const Vector dh = Load(d_h + u) + Load(dh_carry + u);
  const Vector dc = dh * (o * (1.0f - tc * tc)) + Load(dc_in + u);
  Store(dz + u, dc * (g * i * (1.0f - i)));
  Store(dz + units + u, dc * (Load(c_prev + u) * f * (1.0f - f)));
  Store(dz + 2 * units + u, dc * (i * (1.0f - g * g)));
  Store(dz + 3 * units + u, dh * (tc * o * (1.0f - o)));
  Store(dc_out + u, dc * f);
}

// A row of a step: whole vectors, the last one ending at the last unit; fewer than 16 units go through
// buffers of 16.
void LstmBackwardRow(const float* gates, const float* c, const float* c_prev, const float* d_h,
                     const float* dh_carry, const float* dc_in, int64_t units, float* dz, float* dc_out) {
  if (units >= kLanes) {
    for (int64_t u = 0; u < units; u += kLanes) {
      LstmBackwardBlock(gates, c, c_prev, d_h, dh_carry, dc_in, units, std::min(u, units - kLanes), dz, dc_out);
    }
    return;
  }
  float gates16[4 * kLanes] = {}, c16[kLanes] = {}, c_prev16[kLanes] = {}, d_h16[kLanes] = {};
  float dh_carry16[kLanes] = {}, dc_in16[kLanes] = {}, dz16[4 * kLanes], dc_out16[kLanes];
  for (int j = 0; j < 4; ++j) std::copy(gates + j * units, gates + (j + 1) * units, gates16 + j * kLanes);
  std::copy(c, c + units, c16);
  std::copy(c_prev, c_prev + units, c_prev16);
  std::copy(d_h, d_h + units, d_h16);
  std::copy(dh_carry, dh_carry + units, dh_carry16);
  std::copy(dc_in, dc_in + units, dc_in16);
  LstmBackwardBlock(gates16, c16, c_prev16, d_h16, dh_carry16, dc_in16, kLanes, 0, dz16, dc_out16);
  for (int j = 0; j < 4; ++j) std::copy(dz16 + j * kLanes, dz16 + j * kLanes + units, dz + j * units);
  std::copy(dc_out16, dc_out16 + units, dc_out);
}

// Inputs and output row-major, as XLA holds them: d_hs, cs (steps, rows, units); gates, dzs (steps, rows,
// 4 units); r (units, 4 units). Only the matmul works on a transposed copy of the step.
void LstmBackward(int64_t steps, int64_t rows, int64_t units, const float* d_hs, const float* cs,
                  const float* gates, const float* r, float* dzs) {
  const int64_t width = 4 * units, n = rows * units;
  std::vector<float> scratch(5 * n + rows * width + width * units, 0.0f);
  float* dh_carry = scratch.data();
  float* dc_carry[2] = {dh_carry + n, dh_carry + 2 * n};  // read one, write the other
  float* zeros = dh_carry + 3 * n;   // the cell before the first step
  float* dh_t = zeros + n;           // (units, rows)
  float* dz_t = dh_t + n;            // (4 units, rows)
  float* rt = dz_t + rows * width;   // (4 units, units)
  for (int64_t k = 0; k < units; ++k) {
    for (int64_t j = 0; j < width; ++j) rt[j * units + k] = r[k * width + j];
  }
  for (int64_t t = steps - 1, turn = 0; t >= 0; --t, turn ^= 1) {
    const float* c_prev = t ? cs + (t - 1) * n : zeros;
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t x = i * units;
      LstmBackwardRow(gates + (t * rows + i) * width, cs + t * n + x, c_prev + x, d_hs + t * n + x, dh_carry + x,
                      dc_carry[turn] + x, units, dzs + (t * rows + i) * width, dc_carry[turn ^ 1] + x);
    }
    if (t == 0) break;
    const float* dz = dzs + t * rows * width;
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t j = 0; j < width; ++j) dz_t[j * rows + i] = dz[i * width + j];
    }
    RecurrentMatmul(rt, dz_t, dh_t, rows, units, width);
    for (int64_t k = 0; k < units; ++k) {
      for (int64_t i = 0; i < rows; ++i) dh_carry[i * units + k] = dh_t[k * rows + i];
    }
  }
}

namespace ffi = ::xla::ffi;

ffi::Error LstmBackwardFfi(ffi::Buffer<ffi::F32> d_hs, ffi::Buffer<ffi::F32> cs, ffi::Buffer<ffi::F32> gates,
                           ffi::Buffer<ffi::F32> recurrent_kernel, ffi::ResultBuffer<ffi::F32> dzs) {
  const auto dims = d_hs.dimensions();
  LstmBackward(dims[0], dims[1], dims[2], d_hs.typed_data(), cs.typed_data(), gates.typed_data(),
               recurrent_kernel.typed_data(), dzs->typed_data());
  return ffi::Error::Success();
}

ffi::Error LstmForwardFfi(ffi::Buffer<ffi::F32> xw, ffi::Buffer<ffi::F32> recurrent_kernel,
                          ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> hs,
                          ffi::ResultBuffer<ffi::F32> cs, ffi::ResultBuffer<ffi::F32> gates) {
  const auto dims = hs->dimensions();
  // one thread: in training each half batch's XLA program already has a core of its own
  LstmForward(dims[0], dims[1], dims[2], xw.typed_data(), recurrent_kernel.typed_data(), bias.typed_data(),
              hs->typed_data(), cs->typed_data(), gates->typed_data(), 0, dims[1]);
  return ffi::Error::Success();
}

}  // namespace lstm_vs_gru

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmVsGruLstmBackward, lstm_vs_gru::LstmBackwardFfi,
                              ::xla::ffi::Ffi::Bind()
                                  .Arg<::xla::ffi::Buffer<::xla::ffi::F32>>()
                                  .Arg<::xla::ffi::Buffer<::xla::ffi::F32>>()
                                  .Arg<::xla::ffi::Buffer<::xla::ffi::F32>>()
                                  .Arg<::xla::ffi::Buffer<::xla::ffi::F32>>()
                                  .Ret<::xla::ffi::Buffer<::xla::ffi::F32>>());
XLA_FFI_REGISTER_HANDLER(::xla::ffi::GetXlaFfiApi(), "lstm_vs_gru_lstm_backward", "Host", LstmVsGruLstmBackward);

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmVsGruLstmForward, lstm_vs_gru::LstmForwardFfi,
                              ::xla::ffi::Ffi::Bind()
                                  .Arg<::xla::ffi::Buffer<::xla::ffi::F32>>()
                                  .Arg<::xla::ffi::Buffer<::xla::ffi::F32>>()
                                  .Arg<::xla::ffi::Buffer<::xla::ffi::F32>>()
                                  .Ret<::xla::ffi::Buffer<::xla::ffi::F32>>()
                                  .Ret<::xla::ffi::Buffer<::xla::ffi::F32>>()
                                  .Ret<::xla::ffi::Buffer<::xla::ffi::F32>>());
XLA_FFI_REGISTER_HANDLER(::xla::ffi::GetXlaFfiApi(), "lstm_vs_gru_lstm_forward", "Host", LstmVsGruLstmForward);

namespace tensorflow {
namespace {

using CPUDevice = Eigen::ThreadPoolDevice;

REGISTER_OP("ExactSparseAdam")
    .Input("var: resource")
    .Input("m: resource")
    .Input("v: resource")
    .Input("alpha: float")
    .Input("indices: int32")
    .Input("values: N * float")
    .Attr("N: int >= 1")
    .Attr("one_minus_beta_1: float")
    .Attr("one_minus_beta_2: float")
    .Attr("epsilon: float")
    .SetShapeFn([](shape_inference::InferenceContext*) { return absl::OkStatus(); })
    .Doc(R"doc(
Keras' Adam over every row of var (rows, depth) from the gradient rows `values` (their rows concatenated)
at rows `indices`, one index per gradient row; repeated indices add up, and v gets the sum of their squares.
alpha = learning_rate * sqrt(1 - beta_2^t) / (1 - beta_1^t). The complements 1 - beta come computed in
double precision, as Keras computes them, then rounded to float: 1 - 0.999f is not 0.001f.
)doc");

// One row of the update. A function of its own with restrict pointers, so that the compiler vectorises it
// (written inline in the sharded lambda it did not, and the update took 3.5 ms a step instead of 0.6-1.1).
void AdamRow(const float* __restrict g, const float* __restrict g2, float* __restrict w, float* __restrict m,
             float* __restrict v, int64_t depth, float alpha, float one_minus_beta_1, float one_minus_beta_2,
             float epsilon) {
  for (int64_t j = 0; j < depth; ++j) {
    const float m_new = m[j] + (g[j] - m[j]) * one_minus_beta_1;
    const float v_new = v[j] + (g2[j] - v[j]) * one_minus_beta_2;
    m[j] = m_new;
    v[j] = v_new;
    w[j] -= (m_new * alpha) / (std::sqrt(v_new) + epsilon);
  }
}

class ExactSparseAdamOp : public OpKernel {
 public:
  explicit ExactSparseAdamOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("one_minus_beta_1", &one_minus_beta_1_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("one_minus_beta_2", &one_minus_beta_2_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
  }

  void Compute(OpKernelContext* ctx) override {
    // As TensorFlow's sparse training ops do: the variables go to copy-on-read mode (a read then copies the
    // table, not this update), and are updated in place under an exclusive lock. The dense mode would copy
    // the whole table every step once anything has gathered from it (0.5-0.7 ms a step, measured).
    auto locks = MaybeLockVariableInputMutexesInOrder<CPUDevice, float>(ctx, true, true, {0, 1, 2});
    Tensor var, m, v;
    OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<CPUDevice, float>(ctx, 0, true, true, &var));
    OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<CPUDevice, float>(ctx, 1, true, true, &m));
    OP_REQUIRES_OK(ctx, GetInputTensorFromVariable<CPUDevice, float>(ctx, 2, true, true, &v));
    OP_REQUIRES(ctx, var.dims() == 2 && m.shape() == var.shape() && v.shape() == var.shape(),
                errors::InvalidArgument("ExactSparseAdam: var, m and v must be matrices of one shape, got ",
                                        var.shape().DebugString(), ", ", m.shape().DebugString(), ", ",
                                        v.shape().DebugString()));
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(ctx->input(3).shape()),
                errors::InvalidArgument("ExactSparseAdam: alpha must be a scalar"));
    const int64_t rows = var.dim_size(0), depth = var.dim_size(1);
    std::vector<int32> slot;
    std::vector<float> sums, squares;
    OP_REQUIRES_OK(ctx, RowSums(ctx, rows, depth, &slot, &sums, &squares));
    Update(ctx, ctx->input(3).scalar<float>()(), slot, sums, squares, var.flat<float>().data(),
           m.flat<float>().data(), v.flat<float>().data(), rows, depth);
  }

 private:
  // slot[r]: where row r's sums are; the last slot is all zeros, for the rows no occurrence touches.
  absl::Status RowSums(OpKernelContext* ctx, int64_t rows, int64_t depth, std::vector<int32>* slot,
                       std::vector<float>* sums, std::vector<float>* squares) const {
    const auto indices = ctx->input(4).flat<int32>();
    OpInputList values;
    TF_RETURN_IF_ERROR(ctx->input_list("values", &values));
    int64_t occurrences = 0;
    for (const Tensor& part : values) {
      if (part.dims() != 2 || part.dim_size(1) != depth) {
        return errors::InvalidArgument("ExactSparseAdam: values must be (n, ", depth, ") matrices, got ",
                                       part.shape().DebugString());
      }
      occurrences += part.dim_size(0);
    }
    if (occurrences != indices.size()) {
      return errors::InvalidArgument("ExactSparseAdam: ", indices.size(), " indices for ", occurrences,
                                     " gradient rows");
    }
    slot->assign(rows, -1);
    int32 used = 0;
    for (int64_t k = 0; k < occurrences; ++k) {
      const int32 row = indices(k);
      if (row < 0 || row >= rows) {
        return errors::InvalidArgument("ExactSparseAdam: index ", row, " is outside [0, ", rows, ")");
      }
      if ((*slot)[row] < 0) (*slot)[row] = used++;
    }
    sums->assign((used + 1) * depth, 0.0f);
    squares->assign((used + 1) * depth, 0.0f);
    int64_t k = 0;
    for (const Tensor& part : values) {
      const float* g = part.flat<float>().data();
      for (int64_t i = 0; i < part.dim_size(0); ++i, ++k, g += depth) {
        float* s = sums->data() + (*slot)[indices(k)] * depth;
        float* q = squares->data() + (*slot)[indices(k)] * depth;
        for (int64_t j = 0; j < depth; ++j) {
          s[j] += g[j];
          q[j] += g[j] * g[j];
        }
      }
    }
    for (int32& s : *slot) {
      if (s < 0) s = used;
    }
    return absl::OkStatus();
  }

  void Update(OpKernelContext* ctx, float alpha, const std::vector<int32>& slot, const std::vector<float>& sums,
              const std::vector<float>& squares, float* var, float* m, float* v, int64_t rows,
              int64_t depth) const {
    const float one_minus_beta_1 = one_minus_beta_1_, one_minus_beta_2 = one_minus_beta_2_, epsilon = epsilon_;
    const int32* slots = slot.data();
    const float* sums_data = sums.data();
    const float* squares_data = squares.data();
    auto update_rows = [=](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        AdamRow(sums_data + slots[r] * depth, squares_data + slots[r] * depth, var + r * depth, m + r * depth,
                v + r * depth, depth, alpha, one_minus_beta_1, one_minus_beta_2, epsilon);
      }
    };
    const auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
    Shard(threads->num_threads, threads->workers, rows, depth * 24, update_rows);
  }

  float one_minus_beta_1_, one_minus_beta_2_, epsilon_;
};

REGISTER_KERNEL_BUILDER(Name("ExactSparseAdam").Device(DEVICE_CPU), ExactSparseAdamOp);

REGISTER_OP("LstmBackwardLoop")
    .Input("d_hs: float")
    .Input("cs: float")
    .Input("gates: float")
    .Input("recurrent_kernel: float")
    .Output("dzs: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle unused;
      for (int i = 0; i < 3; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 3, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 2, &unused));
      c->set_output(0, c->input(2));
      return absl::OkStatus();
    })
    .Doc(R"doc(
The LSTM's backward loop: the gate pre-activations' gradients dzs (steps, rows, 4 units) from the states'
gradients d_hs and the cells cs (steps, rows, units), the gates [i, f, g, o] (steps, rows, 4 units) and
the recurrent kernel (units, 4 units). See lstm_vs_gru/fused/native_ops.cc.
)doc");

absl::Status CheckLoopShapes(const TensorShape& d_hs, const TensorShape& cs, const TensorShape& gates,
                             const TensorShape& kernel) {
  const bool fits = d_hs.dims() == 3 && cs == d_hs && gates.dims() == 3 &&
                    gates.dim_size(0) == d_hs.dim_size(0) && gates.dim_size(1) == d_hs.dim_size(1) &&
                    gates.dim_size(2) == 4 * d_hs.dim_size(2) && kernel.dims() == 2 &&
                    kernel.dim_size(0) == d_hs.dim_size(2) && kernel.dim_size(1) == 4 * d_hs.dim_size(2);
  if (fits) return absl::OkStatus();
  return errors::InvalidArgument("LstmBackwardLoop: inconsistent shapes ", d_hs.DebugString(), " ",
                                 cs.DebugString(), " ", gates.DebugString(), " ", kernel.DebugString());
}

// Outside XLA (eager, plain graphs): the same loop as a kernel.
class LstmBackwardLoopOp : public OpKernel {
 public:
  explicit LstmBackwardLoopOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& d_hs = ctx->input(0);
    OP_REQUIRES_OK(ctx, CheckLoopShapes(d_hs.shape(), ctx->input(1).shape(), ctx->input(2).shape(),
                                        ctx->input(3).shape()));
    Tensor* dzs = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ctx->input(2).shape(), &dzs));
    lstm_vs_gru::LstmBackward(d_hs.dim_size(0), d_hs.dim_size(1), d_hs.dim_size(2), d_hs.flat<float>().data(),
                              ctx->input(1).flat<float>().data(), ctx->input(2).flat<float>().data(),
                              ctx->input(3).flat<float>().data(), dzs->flat<float>().data());
  }
};

REGISTER_KERNEL_BUILDER(Name("LstmBackwardLoop").Device(DEVICE_CPU), LstmBackwardLoopOp);

// Inside XLA: a custom call of the FFI handler above, row-major operands as XLA lays them out on the CPU.
class LstmBackwardLoopXla : public XlaOpKernel {
 public:
  explicit LstmBackwardLoopXla(OpKernelConstruction* ctx) : XlaOpKernel(ctx) {}

  void Compile(XlaOpKernelContext* ctx) override {
    OP_REQUIRES_OK(ctx, CheckLoopShapes(ctx->InputShape(0), ctx->InputShape(1), ctx->InputShape(2),
                                        ctx->InputShape(3)));
    std::vector<xla::XlaOp> operands;
    for (int i = 0; i < 4; ++i) operands.push_back(ctx->Input(i));
    auto shape = ctx->builder()->GetShape(ctx->Input(2));
    OP_REQUIRES_OK(ctx, shape.status());
    ctx->SetOutput(0, xla::CustomCall(ctx->builder(), "lstm_vs_gru_lstm_backward", operands, *shape, "",
                                      /*has_side_effect=*/false, {}, nullptr, xla::CustomCallSchedule::SCHEDULE_NONE,
                                      xla::CustomCallApiVersion::API_VERSION_TYPED_FFI));
  }
};

// Registered on XLA's CPU compilation device directly, not through REGISTER_XLA_OP: XLA turns those into
// kernels once, when it first starts, so a library loaded after that would not be seen.
REGISTER_KERNEL_BUILDER(Name("LstmBackwardLoop").Device(DEVICE_CPU_XLA_JIT), LstmBackwardLoopXla);


REGISTER_OP("LstmForwardLoop")
    .Input("xw: float")
    .Input("recurrent_kernel: float")
    .Input("bias: float")
    .Output("hs: float")
    .Output("cs: float")
    .Output("gates: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle xw, kernel, bias, states;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &xw));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &kernel));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &bias));
      TF_RETURN_IF_ERROR(c->ReplaceDim(xw, 2, c->Dim(kernel, 0), &states));
      c->set_output(0, states);
      c->set_output(1, states);
      c->set_output(2, xw);
      return absl::OkStatus();
    })
    .Doc(R"doc(
The LSTM's forward loop from the input projection xw (steps, rows, 4 units), the recurrent kernel (units,
4 units) and the bias (4 units): the states hs and cells cs (steps, rows, units) and the gates [i, f, g, o]
(steps, rows, 4 units). See lstm_vs_gru/fused/native_ops.cc.
)doc");

absl::Status CheckForwardShapes(const TensorShape& xw, const TensorShape& kernel, const TensorShape& bias) {
  const bool fits = xw.dims() == 3 && kernel.dims() == 2 && bias.dims() == 1 &&
                    kernel.dim_size(1) == 4 * kernel.dim_size(0) && xw.dim_size(2) == kernel.dim_size(1) &&
                    bias.dim_size(0) == kernel.dim_size(1);
  if (fits) return absl::OkStatus();
  return errors::InvalidArgument("LstmForwardLoop: inconsistent shapes ", xw.DebugString(), " ",
                                 kernel.DebugString(), " ", bias.DebugString());
}

class LstmForwardLoopOp : public OpKernel {
 public:
  explicit LstmForwardLoopOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& xw = ctx->input(0);
    OP_REQUIRES_OK(ctx, CheckForwardShapes(xw.shape(), ctx->input(1).shape(), ctx->input(2).shape()));
    const int64_t units = ctx->input(1).dim_size(0);
    const TensorShape states({xw.dim_size(0), xw.dim_size(1), units});
    Tensor *hs = nullptr, *cs = nullptr, *gates = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, states, &hs));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, states, &cs));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, xw.shape(), &gates));
    const int64_t steps = xw.dim_size(0), rows = xw.dim_size(1);
    const float *x = xw.flat<float>().data(), *r = ctx->input(1).flat<float>().data();
    const float* b = ctx->input(2).flat<float>().data();
    float *h = hs->flat<float>().data(), *c = cs->flat<float>().data(), *g = gates->flat<float>().data();
    // outside XLA (the validation pass's larger batches) the rows are split over TensorFlow's threads
    auto run_rows = [=](int64_t begin, int64_t end) {
      lstm_vs_gru::LstmForward(steps, rows, units, x, r, b, h, c, g, begin, end);
    };
    const auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
    Shard(threads->num_threads, threads->workers, rows, steps * units * 40 * units, run_rows);
  }
};

REGISTER_KERNEL_BUILDER(Name("LstmForwardLoop").Device(DEVICE_CPU), LstmForwardLoopOp);

class LstmForwardLoopXla : public XlaOpKernel {
 public:
  explicit LstmForwardLoopXla(OpKernelConstruction* ctx) : XlaOpKernel(ctx) {}

  void Compile(XlaOpKernelContext* ctx) override {
    const TensorShape xw = ctx->InputShape(0);
    OP_REQUIRES_OK(ctx, CheckForwardShapes(xw, ctx->InputShape(1), ctx->InputShape(2)));
    const int64_t units = ctx->InputShape(1).dim_size(0);
    const xla::Shape states = xla::ShapeUtil::MakeShape(xla::F32, {xw.dim_size(0), xw.dim_size(1), units});
    const xla::Shape gates = xla::ShapeUtil::MakeShape(xla::F32, {xw.dim_size(0), xw.dim_size(1), 4 * units});
    const xla::XlaOp call = xla::CustomCall(
        ctx->builder(), "lstm_vs_gru_lstm_forward", {ctx->Input(0), ctx->Input(1), ctx->Input(2)},
        xla::ShapeUtil::MakeTupleShape({states, states, gates}), "", /*has_side_effect=*/false, {}, nullptr,
        xla::CustomCallSchedule::SCHEDULE_NONE, xla::CustomCallApiVersion::API_VERSION_TYPED_FFI);
    for (int i = 0; i < 3; ++i) ctx->SetOutput(i, xla::GetTupleElement(call, i));
  }
};

REGISTER_KERNEL_BUILDER(Name("LstmForwardLoop").Device(DEVICE_CPU_XLA_JIT), LstmForwardLoopXla);

}  // namespace
}  // namespace tensorflow
