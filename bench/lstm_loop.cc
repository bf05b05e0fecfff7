// The fused trainer's LSTM loops written as plain C++ loops (Eigen, TensorFlow's own copy): what a
// custom kernel would cost per iteration, with no dispatch at all. bench/loop_cost.py --cpp compiles and
// runs it next to the XLA loops; it prints one JSON object per case on stdout.
//
//     lstm_loop ROWS STEPS UNITS REPEATS
//
// Forward per step, as lstm_vs_gru/fused/trainer.lstm_recurrence: z = (xw_t + h @ R) + b; i, f, o = sigmoid,
// g = tanh; c' = f * c + i * g; h' = o * tanh(c'). Backward per step, the same derivative as its grad:
// dh = dh_out + dh_carry; dc = dh * o * (1 - tanh(c)^2) + dc_carry; dz = [dc g i(1-i), dc c_prev f(1-f),
// dc i (1-g^2), dh tanh(c) o(1-o)]; dh_carry = dz @ R^T; dc_carry = dc * f.
#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Map = Eigen::Map<Matrix>;
using ConstMap = Eigen::Map<const Matrix>;

struct Lstm {
  int rows, steps, units, gates;
  std::vector<float> xw, recurrent, bias, hs, cs, activations, d_hs, d_zs;
  Matrix z, dh, dc, dh_carry, dc_carry, zeros;

  Lstm(int rows_, int steps_, int units_)
      : rows(rows_), steps(steps_), units(units_), gates(4 * units_),
        xw(steps * rows * gates), recurrent(units * gates), bias(gates), hs(steps * rows * units),
        cs(steps * rows * units), activations(steps * rows * gates), d_hs(steps * rows * units),
        d_zs(steps * rows * gates), z(rows, gates), dh(rows, units), dc(rows, units),
        dh_carry(rows, units), dc_carry(rows, units), zeros(Matrix::Zero(rows, units)) {
    std::mt19937 generator(0);
    std::normal_distribution<float> normal(0.0f, 0.1f);
    for (auto* values : {&xw, &recurrent, &bias, &d_hs})
      for (float& value : *values) value = normal(generator);
  }

  const float* previous(const std::vector<float>& states, int t) const {
    return t ? &states[(t - 1) * rows * units] : zeros.data();
  }

  void forward() {
    ConstMap r(recurrent.data(), units, gates);
    Eigen::Map<const Eigen::RowVectorXf> b(bias.data(), gates);
    for (int t = 0; t < steps; ++t) {
      z.noalias() = ConstMap(&xw[t * rows * gates], rows, gates);
      z.noalias() += ConstMap(previous(hs, t), rows, units) * r;
      z.rowwise() += b;
      Map a(&activations[t * rows * gates], rows, gates);
      a.leftCols(2 * units) = z.leftCols(2 * units).array().logistic();
      a.middleCols(2 * units, units) = z.middleCols(2 * units, units).array().tanh();
      a.rightCols(units) = z.rightCols(units).array().logistic();
      Map c(&cs[t * rows * units], rows, units), h(&hs[t * rows * units], rows, units);
      c.array() = a.middleCols(units, units).array() * ConstMap(previous(cs, t), rows, units).array() +
                  a.leftCols(units).array() * a.middleCols(2 * units, units).array();
      h.array() = a.rightCols(units).array() * c.array().tanh();
    }
  }

  void backward() {
    const Matrix recurrent_t = ConstMap(recurrent.data(), units, gates).transpose();
    dh_carry.setZero();
    dc_carry.setZero();
    for (int t = steps - 1; t >= 0; --t) {
      ConstMap a(&activations[t * rows * gates], rows, gates);
      const auto i = a.leftCols(units).array(), f = a.middleCols(units, units).array();
      const auto g = a.middleCols(2 * units, units).array(), o = a.rightCols(units).array();
      const Matrix tanh_c = ConstMap(&cs[t * rows * units], rows, units).array().tanh().matrix();
      const auto tc = tanh_c.array();
      dh.array() = ConstMap(&d_hs[t * rows * units], rows, units).array() + dh_carry.array();
      dc.array() = dh.array() * o * (1 - tc * tc) + dc_carry.array();
      Map dz(&d_zs[t * rows * gates], rows, gates);
      dz.leftCols(units).array() = dc.array() * g * i * (1 - i);
      dz.middleCols(units, units).array() =
          dc.array() * ConstMap(previous(cs, t), rows, units).array() * f * (1 - f);
      dz.middleCols(2 * units, units).array() = dc.array() * i * (1 - g * g);
      dz.rightCols(units).array() = dh.array() * tc * o * (1 - o);
      dh_carry.noalias() = dz * recurrent_t;
      dc_carry.array() = dc.array() * f;
    }
  }
};

// Best over `repeats` of the mean time of 20 calls, in microseconds per call.
template <class Function>
double best_microseconds(Function function, int repeats) {
  function();
  double best = 1e30;
  for (int repeat = 0; repeat < repeats; ++repeat) {
    const auto start = std::chrono::steady_clock::now();
    for (int call = 0; call < 20; ++call) function();
    const std::chrono::duration<double, std::micro> spent = std::chrono::steady_clock::now() - start;
    best = std::min(best, spent.count() / 20);
  }
  return best;
}

void report(const char* name, double microseconds, int iterations) {
  std::printf("{\"case\": \"%s\", \"iterations\": %d, \"call_ms\": %.6f, \"us_per_iteration\": %.4f}\n", name,
              iterations, microseconds / 1e3, microseconds / iterations);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s ROWS STEPS UNITS REPEATS\n", argv[0]);
    return 2;
  }
  const int rows = std::atoi(argv[1]), steps = std::atoi(argv[2]), units = std::atoi(argv[3]);
  const int repeats = std::atoi(argv[4]);
  Lstm lstm(rows, steps, units);
  Matrix h = Matrix::Random(rows, units), r = Matrix::Random(units, 4 * units), out(rows, 4 * units);
  Matrix dz = Matrix::Random(rows, 4 * units), r_t = r.transpose(), dh(rows, units);
  report("C++ Eigen matmul, LSTM forward shape", best_microseconds([&] { out.noalias() = h * r; }, repeats), 1);
  report("C++ Eigen matmul, LSTM backward shape", best_microseconds([&] { dh.noalias() = dz * r_t; }, repeats), 1);
  report("C++ LSTM forward loop", best_microseconds([&] { lstm.forward(); }, repeats), steps);
  report("C++ LSTM backward loop", best_microseconds([&] { lstm.backward(); }, repeats), steps);
  return 0;
}
