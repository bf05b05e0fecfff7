// Keras' Adam over a whole embedding table as one pass in plain C++ (OpenMP threads): what a custom kernel
// for the fused trainer's table update would cost, against the three XLA passes it takes now.
// bench/adam_cost.py compiles and runs it; it prints one JSON object per thread count on stdout.
//
//     adam_pass ROWS WIDTH OCCURRENCES UPDATES REPEATS THREADS...
//
// Per element, as lstm_vs_gru/fused/trainer.ExactAdam: m += (g - m) * (1 - beta_1); v += (g2 - v) * (1 - beta_2);
// w -= m * alpha / (sqrt(v) + epsilon), where g and g2 are the row's gradient sum and sum of squares, looked up
// through the row's slot (untouched rows point at an all-zero slot), as the XLA update gathers them.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace {

struct Table {
  int rows, width, slots;
  std::vector<float> weights, m, v, sums, squares;
  std::vector<int> first;  // a row's slot: its first occurrence in the batch, or `slots - 1` (zeros)

  Table(int rows_, int width_, int occurrences)
      : rows(rows_), width(width_), slots(occurrences + 1), weights(size_t(rows) * width),
        m(size_t(rows) * width), v(size_t(rows) * width), sums(size_t(slots) * width),
        squares(size_t(slots) * width), first(rows, occurrences) {
    std::mt19937 generator(0);
    std::normal_distribution<float> normal(0.0f, 0.01f);
    std::uniform_int_distribution<int> row(0, rows - 1);
    for (float& value : weights) value = normal(generator);
    for (int k = 0; k < occurrences; ++k) {
      int& slot = first[row(generator)];
      if (slot == occurrences) slot = k;
    }
    for (int k = 0; k < occurrences * width; ++k) {
      sums[k] = normal(generator);
      squares[k] = sums[k] * sums[k];
    }
  }

  void update(int step) {
    const float beta_1 = 0.9f, beta_2 = 0.999f, epsilon = 1e-7f;
    const float alpha = 1e-3f * std::sqrt(1.0f - std::pow(beta_2, float(step))) / (1.0f - std::pow(beta_1, float(step)));
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; ++r) {
      const float* g = &sums[size_t(first[r]) * width];
      const float* g2 = &squares[size_t(first[r]) * width];
      float* w_row = &weights[size_t(r) * width];
      float* m_row = &m[size_t(r) * width];
      float* v_row = &v[size_t(r) * width];
#pragma omp simd
      for (int j = 0; j < width; ++j) {
        const float m_new = m_row[j] + (g[j] - m_row[j]) * (1.0f - beta_1);
        const float v_new = v_row[j] + (g2[j] - v_row[j]) * (1.0f - beta_2);
        m_row[j] = m_new;
        v_row[j] = v_new;
        w_row[j] -= m_new * alpha / (std::sqrt(v_new) + epsilon);
      }
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 7) {
    std::fprintf(stderr, "usage: %s ROWS WIDTH OCCURRENCES UPDATES REPEATS THREADS...\n", argv[0]);
    return 2;
  }
  const int rows = std::atoi(argv[1]), width = std::atoi(argv[2]), occurrences = std::atoi(argv[3]);
  const int updates = std::atoi(argv[4]), repeats = std::atoi(argv[5]);
  Table table(rows, width, occurrences);
  int step = 0;
  for (int a = 6; a < argc; ++a) {
    const int threads = std::atoi(argv[a]);
    omp_set_num_threads(threads);
    table.update(++step);  // warm-up: threads started, pages touched
    double best = 1e30;
    for (int repeat = 0; repeat < repeats; ++repeat) {
      const auto start = std::chrono::steady_clock::now();
      for (int u = 0; u < updates; ++u) table.update(++step);
      const std::chrono::duration<double, std::milli> spent = std::chrono::steady_clock::now() - start;
      best = std::min(best, spent.count() / updates);
    }
    std::printf("{\"case\": \"C++, one pass, %d thread%s\", \"ms_per_update\": %.6f, \"checksum\": %.6g}\n", threads,
                threads == 1 ? "" : "s", best, double(table.weights[0]));
  }
  return 0;
}
