// TensorFlow ops in C++ for the fused trainer (stages/fast_training.py), built on first use by
// stages/native_ops.py against the installed TensorFlow.
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
// LstmBackwardLoop: the LSTM's backward loop of fast_training.lstm_recurrence, for use inside its XLA
// program: XLA lowers the op to a call of this code (an XLA FFI custom call), where XLA's own loop
// dispatches a small matmul and a few element-wise kernels per step. Per step t, from the last:
//
//   dh = d_hs[t] + dh_carry;  dc = dh * dc_dh[t] + dc_carry
//   dzs[t] = [dc * dz_d[t][i], dc * dz_d[t][f], dc * dz_d[t][c], dh * dz_d[t][o]]   (gate blocks of U)
//   dh_carry = dzs[t] @ R^T;  dc_carry = dc * forget[t]
//
// The matmul sums over the gates in order, as XLA's dot does on this project's machine: there the results
// were XLA's loop's bit for bit, and the lab's metrics did not change (tests/test_native_ops.py holds them
// to float rounding, which is what another CPU may give).
#define EIGEN_USE_THREADS

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

// Inputs and output row-major, as XLA holds them: d_hs, dc_dh, forget (steps, rows, units); dz_d, dzs
// (steps, rows, 4 units); r (units, 4 units). Only the matmul works on a transposed copy of the step.
void LstmBackward(int64_t steps, int64_t rows, int64_t units, const float* d_hs, const float* dc_dh,
                  const float* dz_d, const float* forget, const float* r, float* dzs) {
  const int64_t gates = 4 * units, n = rows * units;
  std::vector<float> scratch(3 * n + rows * gates + gates * units, 0.0f);
  float* dh_carry = scratch.data();
  float* dc_carry = dh_carry + n;
  float* dh_t = dc_carry + n;        // (units, rows)
  float* dz_t = dh_t + n;            // (gates, rows)
  float* rt = dz_t + rows * gates;   // (gates, units)
  for (int64_t k = 0; k < units; ++k) {
    for (int64_t j = 0; j < gates; ++j) rt[j * units + k] = r[k * gates + j];
  }
  for (int64_t t = steps - 1; t >= 0; --t) {
    const float* dh_out = d_hs + t * n;
    const float* factor = dc_dh + t * n;
    const float* forget_t = forget + t * n;
    for (int64_t i = 0; i < rows; ++i) {
      const float* d = dz_d + (t * rows + i) * gates;
      float* dz = dzs + (t * rows + i) * gates;
      for (int64_t u = 0; u < units; ++u) {
        const int64_t x = i * units + u;
        const float dh = dh_out[x] + dh_carry[x];
        const float dc = dh * factor[x] + dc_carry[x];
        dz[u] = dc * d[u];
        dz[units + u] = dc * d[units + u];
        dz[2 * units + u] = dc * d[2 * units + u];
        dz[3 * units + u] = dh * d[3 * units + u];
        dc_carry[x] = dc * forget_t[x];
      }
    }
    if (t == 0) break;
    const float* dz = dzs + t * rows * gates;
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t j = 0; j < gates; ++j) dz_t[j * rows + i] = dz[i * gates + j];
    }
    RecurrentMatmul(rt, dz_t, dh_t, rows, units, gates);
    for (int64_t k = 0; k < units; ++k) {
      for (int64_t i = 0; i < rows; ++i) dh_carry[i * units + k] = dh_t[k * rows + i];
    }
  }
}

namespace ffi = ::xla::ffi;

ffi::Error LstmBackwardFfi(ffi::Buffer<ffi::F32> d_hs, ffi::Buffer<ffi::F32> dc_dh, ffi::Buffer<ffi::F32> dz_d,
                           ffi::Buffer<ffi::F32> forget, ffi::Buffer<ffi::F32> recurrent_kernel,
                           ffi::ResultBuffer<ffi::F32> dzs) {
  const auto dims = d_hs.dimensions();
  LstmBackward(dims[0], dims[1], dims[2], d_hs.typed_data(), dc_dh.typed_data(), dz_d.typed_data(),
               forget.typed_data(), recurrent_kernel.typed_data(), dzs->typed_data());
  return ffi::Error::Success();
}

}  // namespace lstm_vs_gru

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmVsGruLstmBackward, lstm_vs_gru::LstmBackwardFfi,
                              ::xla::ffi::Ffi::Bind()
                                  .Arg<::xla::ffi::Buffer<::xla::ffi::F32>>()
                                  .Arg<::xla::ffi::Buffer<::xla::ffi::F32>>()
                                  .Arg<::xla::ffi::Buffer<::xla::ffi::F32>>()
                                  .Arg<::xla::ffi::Buffer<::xla::ffi::F32>>()
                                  .Arg<::xla::ffi::Buffer<::xla::ffi::F32>>()
                                  .Ret<::xla::ffi::Buffer<::xla::ffi::F32>>());
XLA_FFI_REGISTER_HANDLER(::xla::ffi::GetXlaFfiApi(), "lstm_vs_gru_lstm_backward", "Host", LstmVsGruLstmBackward);

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
    .Input("dc_dh: float")
    .Input("dz_d: float")
    .Input("forget: float")
    .Input("recurrent_kernel: float")
    .Output("dzs: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle unused;
      for (int i = 0; i < 4; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 3, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 2, &unused));
      c->set_output(0, c->input(2));
      return absl::OkStatus();
    })
    .Doc(R"doc(
The LSTM's backward loop: dzs (steps, rows, 4 units) from d_hs, dc_dh, forget (steps, rows, units), dz_d
(steps, rows, 4 units) and the recurrent kernel (units, 4 units). See stages/native_ops.cc.
)doc");

absl::Status CheckLoopShapes(const TensorShape& d_hs, const TensorShape& dc_dh, const TensorShape& dz_d,
                             const TensorShape& forget, const TensorShape& kernel) {
  const bool fits = d_hs.dims() == 3 && dc_dh == d_hs && forget == d_hs && dz_d.dims() == 3 &&
                    dz_d.dim_size(0) == d_hs.dim_size(0) && dz_d.dim_size(1) == d_hs.dim_size(1) &&
                    dz_d.dim_size(2) == 4 * d_hs.dim_size(2) && kernel.dims() == 2 &&
                    kernel.dim_size(0) == d_hs.dim_size(2) && kernel.dim_size(1) == 4 * d_hs.dim_size(2);
  if (fits) return absl::OkStatus();
  return errors::InvalidArgument("LstmBackwardLoop: inconsistent shapes ", d_hs.DebugString(), " ",
                                 dc_dh.DebugString(), " ", dz_d.DebugString(), " ", forget.DebugString(), " ",
                                 kernel.DebugString());
}

// Outside XLA (eager, plain graphs): the same loop as a kernel.
class LstmBackwardLoopOp : public OpKernel {
 public:
  explicit LstmBackwardLoopOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& d_hs = ctx->input(0);
    OP_REQUIRES_OK(ctx, CheckLoopShapes(d_hs.shape(), ctx->input(1).shape(), ctx->input(2).shape(),
                                        ctx->input(3).shape(), ctx->input(4).shape()));
    Tensor* dzs = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ctx->input(2).shape(), &dzs));
    lstm_vs_gru::LstmBackward(d_hs.dim_size(0), d_hs.dim_size(1), d_hs.dim_size(2), d_hs.flat<float>().data(),
                              ctx->input(1).flat<float>().data(), ctx->input(2).flat<float>().data(),
                              ctx->input(3).flat<float>().data(), ctx->input(4).flat<float>().data(),
                              dzs->flat<float>().data());
  }
};

REGISTER_KERNEL_BUILDER(Name("LstmBackwardLoop").Device(DEVICE_CPU), LstmBackwardLoopOp);

// Inside XLA: a custom call of the FFI handler above, row-major operands as XLA lays them out on the CPU.
class LstmBackwardLoopXla : public XlaOpKernel {
 public:
  explicit LstmBackwardLoopXla(OpKernelConstruction* ctx) : XlaOpKernel(ctx) {}

  void Compile(XlaOpKernelContext* ctx) override {
    OP_REQUIRES_OK(ctx, CheckLoopShapes(ctx->InputShape(0), ctx->InputShape(1), ctx->InputShape(2),
                                        ctx->InputShape(3), ctx->InputShape(4)));
    std::vector<xla::XlaOp> operands;
    for (int i = 0; i < 5; ++i) operands.push_back(ctx->Input(i));
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

}  // namespace
}  // namespace tensorflow
