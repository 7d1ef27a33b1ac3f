// Helpers shared by the tests: random inputs, gradient checks as doctest assertions, and the
// gradient-contract check.
#pragma once

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include <eigenformer/core/param.hpp>
#include <eigenformer/core/random.hpp>
#include <eigenformer/train/gradcheck.hpp>

namespace eftest {

using eigenformer::Index;
using MatD = eigenformer::Matrix<double>;

/// The whole content of the file at path ("" when it cannot be read).
inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// The path of name in the directory dir under the system's temporary directory, created if
/// missing.
inline std::string temp_file(const std::string& dir, const std::string& name) {
  const std::filesystem::path d = std::filesystem::temp_directory_path() / dir;
  std::filesystem::create_directories(d);
  return (d / name).string();
}

/// Replaces the file at path by bytes.
inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

template <class Scalar = double>
eigenformer::Matrix<Scalar> random_matrix(Index rows, Index cols, eigenformer::Rng& rng,
                                          double scale = 1.0) {
  eigenformer::Matrix<Scalar> m(rows, cols);
  eigenformer::fill_normal(m, 0.0, scale, rng);
  return m;
}

/// Asserts that `analytic` matches central differences of loss() in every entry of x.
template <class Loss>
void check_grad(MatD& x, const MatD& analytic, Loss&& loss, const std::string& what,
                const eigenformer::GradCheckOptions& opt = {}) {
  const auto r = eigenformer::check_gradient(x, analytic, loss, opt);
  INFO(what << ": worst entry (" << r.worst_row << ", " << r.worst_col << ") analytic "
            << r.analytic << " numeric " << r.numeric << " ratio " << r.worst_ratio);
  CHECK(r.ok);
}

/// Checks every parameter's gradient. `loss` recomputes <y, R>; `backward` runs forward with a
/// cache and backward with dy = R, after the caller's zero_grad().
template <class Loss>
void check_param_grads(const eigenformer::ParamList<double>& params, Loss&& loss,
                       const std::function<void()>& run_backward,
                       const eigenformer::GradCheckOptions& opt = {}) {
  eigenformer::zero_grad(params);
  run_backward();
  for (const auto& p : params) {
    const MatD analytic = p.param->grad;
    check_grad(p.param->value, analytic, loss, "parameter " + p.name, opt);
  }
}

/// The gradient contract: parameter gradients accumulate across backward calls, input gradients
/// come back fresh. `step` runs one forward + backward and returns the input gradient.
inline void check_gradient_contract(const eigenformer::ParamList<double>& params,
                                    const std::function<MatD()>& step) {
  eigenformer::zero_grad(params);
  const MatD dx1 = step();
  std::vector<MatD> once;
  for (const auto& p : params) once.push_back(p.param->grad);
  // Pre-fill with non-zero values: backward must add to them, not overwrite them.
  std::vector<MatD> prefill;
  for (const auto& p : params) {
    p.param->grad.setConstant(0.25);
    prefill.push_back(p.param->grad);
  }
  const MatD dx2 = step();
  const MatD dx3 = step();
  CHECK((dx2 - dx1).cwiseAbs().maxCoeff() == 0.0);
  CHECK((dx3 - dx1).cwiseAbs().maxCoeff() == 0.0);
  for (size_t i = 0; i < params.size(); ++i) {
    INFO("parameter " << params[i].name);
    const MatD expected = prefill[i] + 2.0 * once[i];
    CHECK((params[i].param->grad - expected).cwiseAbs().maxCoeff() <=
          1e-12 * (1.0 + expected.cwiseAbs().maxCoeff()));
  }
}

/// Runs f, which must throw Error (eigenformer::ArgumentError unless given, e.g.
/// check_throws_with<eigenformer::IoError>) whose message contains every fragment.
template <class Error = eigenformer::ArgumentError, class F>
void check_throws_with(F&& f, const std::vector<std::string>& fragments) {
  bool threw = false;
  try {
    f();
  } catch (const Error& e) {
    threw = true;
    const std::string msg = e.what();
    for (const auto& frag : fragments) {
      INFO("message: " << msg);
      CHECK(msg.find(frag) != std::string::npos);
    }
  }
  CHECK(threw);
}

/// Runs backward(ready) with a GradReady callback that records each reported parameter's gradient
/// at the moment of the report, then checks the callback's contract (core/param.hpp): every
/// parameter of params is reported exactly once, and its gradient was already final then (equal to
/// the one backward ends with), so data-parallel training may send it while backward goes on.
template <class Scalar, class Backward>
void check_grad_ready(const eigenformer::ParamList<Scalar>& params, Backward&& backward) {
  std::map<const eigenformer::Param<Scalar>*, eigenformer::Matrix<Scalar>> at_report;
  int repeats = 0;
  backward([&](const eigenformer::ParamList<Scalar>& done) {
    for (const auto& p : done) {
      repeats += at_report.count(p.param) ? 1 : 0;
      at_report[p.param] = p.param->grad;
    }
  });
  CHECK(repeats == 0);
  CHECK(at_report.size() == params.size());
  for (const auto& p : params) {
    INFO(p.name);
    REQUIRE(at_report.count(p.param) == 1);
    CHECK(at_report[p.param] == p.param->grad);
  }
}

}  // namespace eftest
