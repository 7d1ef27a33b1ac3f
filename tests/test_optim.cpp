#include <eigenformer/train/optim.hpp>

#include <atomic>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "test_util.hpp"

using namespace eigenformer;
using eftest::MatD;

namespace {

const double kW0[4] = {0.5, -1.0, 2.0, 0.0};
// The gradient fed at steps 1, 2 and 3.
const double kGrads[3][4] = {{0.1, -0.2, 0.3, 0.0}, {-0.5, 0.4, 0.05, 1.0}, {0.2, 0.2, -0.1, -2.0}};

template <class Scalar>
Param<Scalar> make_param() {
  Param<Scalar> p(2, 2);
  for (Index k = 0; k < 4; ++k) p.value(k / 2, k % 2) = static_cast<Scalar>(kW0[k]);
  return p;
}

template <class Scalar>
void set_grad(Param<Scalar>& p, int step) {
  for (Index k = 0; k < 4; ++k) p.grad(k / 2, k % 2) = static_cast<Scalar>(kGrads[step][k]);
}

/// Adam / AdamW on one scalar written out from torch's documentation, for three steps.
double reference_adam(double w, int k, double lr, double b1, double b2, double eps, double wd,
                      bool decoupled) {
  double m = 0, v = 0;
  for (int t = 1; t <= 3; ++t) {
    double g = kGrads[t - 1][k];
    if (decoupled) {
      w = w * (1 - lr * wd);
    } else {
      g = g + wd * w;
    }
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    const double m_hat = m / (1 - std::pow(b1, t));
    const double v_hat = v / (1 - std::pow(b2, t));
    // Torch's eps sits outside the bias-corrected sqrt: sqrt(v_hat) + eps.
    w = w - lr * m_hat / (std::sqrt(v_hat) + eps);
  }
  return w;
}

double tol_for(bool is_float) { return is_float ? 2e-6 : 1e-14; }

}  // namespace

TEST_CASE_TEMPLATE("SGD takes one plain step and momentum steps by hand", Scalar, float, double) {
  const double tol = tol_for(std::is_same<Scalar, float>::value);
  Param<Scalar> p = make_param<Scalar>();
  SGD<Scalar> plain({{"w", &p}}, Scalar(0.1), Scalar(0), Scalar(0.01));
  set_grad(p, 0);
  plain.step();
  for (Index k = 0; k < 4; ++k)
    CHECK(std::abs(p.value(k / 2, k % 2) - (kW0[k] - 0.1 * (kGrads[0][k] + 0.01 * kW0[k]))) <= tol);
  CHECK(plain.steps() == 1);

  // Momentum: buf1 = g1, w1 = w0 - lr g1; buf2 = 0.9 g1 + g2, w2 = w1 - lr buf2.
  Param<Scalar> q = make_param<Scalar>();
  SGD<Scalar> sgd({{"w", &q}}, Scalar(0.1), Scalar(0.9));
  set_grad(q, 0);
  sgd.step();
  set_grad(q, 1);
  sgd.step();
  for (Index k = 0; k < 4; ++k) {
    const double w1 = kW0[k] - 0.1 * kGrads[0][k];
    const double w2 = w1 - 0.1 * (0.9 * kGrads[0][k] + kGrads[1][k]);
    CHECK(std::abs(q.value(k / 2, k % 2) - w2) <= tol);
  }
}

TEST_CASE_TEMPLATE("Adam and AdamW follow the update formulas for three steps", Scalar, float,
                   double) {
  const double tol = tol_for(std::is_same<Scalar, float>::value);
  for (bool decoupled : {false, true}) {
    for (double wd : {0.0, 0.1}) {
      CAPTURE(decoupled);
      CAPTURE(wd);
      Param<Scalar> p = make_param<Scalar>();
      std::unique_ptr<Adam<Scalar>> opt;
      const ParamList<Scalar> params{{"w", &p}};
      if (decoupled) {
        opt = std::make_unique<AdamW<Scalar>>(params, Scalar(0.01), Scalar(0.8), Scalar(0.95),
                                              Scalar(1e-6), Scalar(wd));
      } else {
        opt = std::make_unique<Adam<Scalar>>(params, Scalar(0.01), Scalar(0.8), Scalar(0.95),
                                             Scalar(1e-6), Scalar(wd));
      }
      CHECK(opt->decoupled_weight_decay() == decoupled);
      for (int t = 0; t < 3; ++t) {
        set_grad(p, t);
        opt->step();
      }
      CHECK(opt->steps() == 3);
      for (int k = 0; k < 4; ++k) {
        const double expected = reference_adam(kW0[k], k, 0.01, 0.8, 0.95, 1e-6, wd, decoupled);
        CHECK(std::abs(p.value(k / 2, k % 2) - expected) <= tol);
      }
    }
  }
}

// Reference values from PyTorch 1.13 (float64), made by:
//   w = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=torch.float64, requires_grad=True)
//   opt = cls([w], lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)   # Adam, AdamW
//   opt = torch.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=0.01)
//   for g in grads (kGrads above): w.grad = torch.tensor(g, dtype=torch.float64); opt.step()
//   print([repr(x) for x in w.detach().flatten().tolist()])
TEST_CASE("Adam, AdamW and SGD match torch.optim after three steps") {
  const double adam[4] = {0.4956173962001504, -0.9935871822021024, 1.9729218688012464,
                          -0.004023284928112777};
  const double adamw[4] = {0.49667007467561197, -0.9968844104995205, 1.973463126824201,
                           -0.0040167699622839625};
  const double sgd[4] = {0.5450853895, -1.0362307789999998, 1.9081085679999998,
                         0.010099999999999998};
  Param<double> a = make_param<double>(), b = make_param<double>(), c = make_param<double>();
  Adam<double> opt_a({{"w", &a}}, 0.01, 0.8, 0.95, 1e-6, 0.1);
  AdamW<double> opt_b({{"w", &b}}, 0.01, 0.8, 0.95, 1e-6, 0.1);
  SGD<double> opt_c({{"w", &c}}, 0.1, 0.9, 0.01);
  for (int t = 0; t < 3; ++t) {
    set_grad(a, t);
    set_grad(b, t);
    set_grad(c, t);
    opt_a.step();
    opt_b.step();
    opt_c.step();
  }
  for (Index k = 0; k < 4; ++k) {
    CHECK(a.value(k / 2, k % 2) == doctest::Approx(adam[k]).epsilon(1e-14));
    CHECK(b.value(k / 2, k % 2) == doctest::Approx(adamw[k]).epsilon(1e-14));
    CHECK(c.value(k / 2, k % 2) == doctest::Approx(sgd[k]).epsilon(1e-14));
  }
}

TEST_CASE_TEMPLATE("Adam minimises a quadratic over several parameters", Scalar, float, double) {
  // f = 0.5 |w - target|^2 summed over two parameters; the gradient is w - target.
  Rng rng(21);
  Param<Scalar> w1(3, 4), w2(1, 5, true);
  const Matrix<Scalar> t1 = eftest::random_matrix<Scalar>(3, 4, rng);
  const Matrix<Scalar> t2 = eftest::random_matrix<Scalar>(1, 5, rng);
  const ParamList<Scalar> params{{"w1", &w1}, {"w2", &w2}};
  Adam<Scalar> opt(params, Scalar(0.05));
  // An Optimizer reference drives any of them.
  Optimizer<Scalar>& any = opt;
  for (int it = 0; it < 1000; ++it) {
    any.zero_grad();
    w1.grad += w1.value - t1;
    w2.grad += w2.value - t2;
    any.step();
  }
  CHECK((w1.value - t1).cwiseAbs().maxCoeff() < Scalar(1e-3));
  CHECK((w2.value - t2).cwiseAbs().maxCoeff() < Scalar(1e-3));
  CHECK(any.steps() == 1000);
}

TEST_CASE("Adam and AdamW update large parameters in threaded row blocks like the whole matrix") {
  // Both shapes are above the threading threshold of core/parallel.hpp. 300 x 40 is one unit
  // of parallel_over_rows; 1000 x 37 is three (442, 442 and 116 rows), which 2 threads (ctest's
  // test_optim_2threads) share out. Neither the units nor the matrices are whole numbers of
  // Adam's chunks, and the second and third units start between chunk boundaries. Over three
  // steps, the result is still the formula written out for the whole matrix.
  for (const auto& shape : {std::pair<Index, Index>{300, 40}, {1000, 37}}) {
    const Index rows = shape.first, cols = shape.second;
    for (bool decoupled : {false, true}) {
      CAPTURE(rows);
      CAPTURE(decoupled);
      Rng rng(5);
      Param<float> p(rows, cols);
      p.value = eftest::random_matrix<float>(rows, cols, rng);
      const float lr = 0.01f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.1f;
      std::unique_ptr<Optimizer<float>> opt;
      if (decoupled)
        opt = std::make_unique<AdamW<float>>(ParamList<float>{{"p", &p}}, lr, b1, b2, eps, wd);
      else
        opt = std::make_unique<Adam<float>>(ParamList<float>{{"p", &p}}, lr, b1, b2, eps, wd);
      Matrix<float> w = p.value, m = Matrix<float>::Zero(rows, cols), v = m;
      for (int t = 1; t <= 3; ++t) {
        p.grad = eftest::random_matrix<float>(rows, cols, rng);
        opt->step();
        if (decoupled) w *= 1.0f - lr * wd;
        const Matrix<float> g = decoupled ? Matrix<float>(p.grad) : Matrix<float>(p.grad + wd * w);
        m = b1 * m + (1.0f - b1) * g;
        v = b2 * v.array() + (1.0f - b2) * g.array().square();
        // The bias corrections in double from the float betas, as Adam::step takes them.
        const float step_size = static_cast<float>(lr / (1.0 - std::pow(double(b1), t)));
        const float bc2 = static_cast<float>(std::sqrt(1.0 - std::pow(double(b2), t)));
        w.array() -= step_size * (m.array() / (v.array().sqrt() / bc2 + eps));
        CHECK((p.value - w).cwiseAbs().maxCoeff() <= 1e-6f);
      }
    }
  }
}

TEST_CASE("Optimizers expose and change the learning rate and clear gradients") {
  Param<double> p = make_param<double>();
  AdamW<double> opt({{"w", &p}});
  CHECK(opt.lr() == 1e-3);
  CHECK(opt.weight_decay() == 0.01);
  CHECK(opt.beta1() == 0.9);
  CHECK(opt.beta2() == 0.999);
  CHECK(opt.eps() == 1e-8);
  opt.set_lr(0.5);
  CHECK(opt.lr() == 0.5);
  CHECK(opt.steps() == 0);
  p.grad.setConstant(3.0);
  opt.zero_grad();
  CHECK(p.grad.isZero());
  CHECK(opt.params().size() == 1);
  CHECK(Adam<double>({{"w", &p}}).weight_decay() == 0.0);

  // With lr = 0, nothing moves (not even AdamW's decay).
  opt.set_lr(0.0);
  p.grad.setConstant(1.0);
  const MatD before = p.value;
  opt.step();
  CHECK(p.value == before);
}

TEST_CASE("Optimizers reject bad arguments and parameters that changed shape") {
  Param<float> p(2, 3);
  const ParamList<float> params{{"layer.weight", &p}};
  eftest::check_throws_with([&] { SGD<float>(params, -0.1f); }, {"SGD::SGD", "'lr'", "-0.1"});
  eftest::check_throws_with([&] { SGD<float>(params, 0.1f, -1.f); }, {"SGD::SGD", "'momentum'"});
  eftest::check_throws_with([&] { SGD<float>(ParamList<float>{}, 0.1f); },
                            {"SGD::SGD", "'params'", "empty"});
  eftest::check_throws_with(
      [&] {
        SGD<float>(ParamList<float>{{"x", nullptr}}, 0.1f);
      },
      {"SGD::SGD", "'params'", "'x'"});
  eftest::check_throws_with([&] { Adam<float>(params, 1e-3f, 1.0f); },
                            {"Adam::Adam", "'beta1'", "[0, 1)"});
  eftest::check_throws_with([&] { AdamW<float>(params, 1e-3f, 0.9f, -0.5f); },
                            {"AdamW::AdamW", "'beta2'"});
  eftest::check_throws_with([&] { AdamW<float>(params, 1e-3f, 0.9f, 0.99f, -1.f); },
                            {"AdamW::AdamW", "'eps'"});
  eftest::check_throws_with([&] { Adam<float>(params, 1e-3f, 0.9f, 0.99f, 1e-8f, std::nanf("")); },
                            {"Adam::Adam", "'weight_decay'", "nan"});
  Param<float> bad_grad(2, 3);
  bad_grad.grad.resize(3, 2);
  eftest::check_throws_with(
      [&] {
        SGD<float>({{"b", &bad_grad}}, 0.1f);
      },
      {"SGD::SGD", "'b'", "(2, 3)", "(3, 2)"});

  AdamW<float> opt(params, 0.1f);
  eftest::check_throws_with([&] { opt.set_lr(-1.f); }, {"AdamW::set_lr", "'lr'"});
  CHECK(opt.lr() == 0.1f);
  p.value = Matrix<float>::Ones(3, 3);
  p.grad = Matrix<float>::Ones(3, 3);
  eftest::check_throws_with([&] { opt.step(); },
                            {"AdamW::step", "'layer.weight'", "(3, 3)", "(2, 3)"});
  CHECK(opt.steps() == 0);
  CHECK(p.value == Matrix<float>::Ones(3, 3));
  p.value = Matrix<float>::Ones(2, 3);
  eftest::check_throws_with([&] { opt.step(); }, {"AdamW::step", "grad (3, 3)"});
  p.grad = Matrix<float>::Ones(2, 3);
  opt.step();
  CHECK(opt.steps() == 1);
}

TEST_CASE_TEMPLATE("clip_grad_norm scales all gradients together like PyTorch", Scalar, float,
                   double) {
  Param<Scalar> a(1, 2), b(1, 1);
  a.grad << 3, 4;
  b.grad << 12;
  const ParamList<Scalar> params{{"a", &a}, {"b", &b}};
  // Norm 13 is within 20: unchanged. max_norm is a double for float models too.
  CHECK(clip_grad_norm(params, 20.0) == Scalar(13));
  CHECK(a.grad(0, 1) == Scalar(4));
  // Above 6.5: scaled by 6.5 / (13 + 1e-6).
  CHECK(clip_grad_norm(params, Scalar(6.5)) == Scalar(13));
  const double coef = 6.5 / (13 + 1e-6);
  CHECK(static_cast<double>(a.grad(0, 0)) == doctest::Approx(3 * coef).epsilon(1e-6));
  CHECK(static_cast<double>(b.grad(0, 0)) == doctest::Approx(12 * coef).epsilon(1e-6));
  CHECK(static_cast<double>(clip_grad_norm(params, Scalar(100))) ==
        doctest::Approx(13 * coef).epsilon(1e-6));
}

TEST_CASE("clip_grad_norm leaves non-finite gradients alone and grads_finite names them") {
  Param<float> a(1, 2), b(2, 2);
  a.grad << 3, 4;
  b.grad.setConstant(1.f);
  const ParamList<float> params{{"a", &a}, {"b", &b}};
  std::string bad = "unchanged";
  CHECK(grads_finite(params, &bad));
  CHECK(bad == "unchanged");
  b.grad(1, 0) = std::numeric_limits<float>::infinity();
  CHECK(std::isinf(clip_grad_norm(params, 1.f)));
  CHECK(a.grad(0, 0) == 3.f);
  CHECK_FALSE(grads_finite(params, &bad));
  CHECK(bad == "b");
  a.grad(0, 1) = std::nanf("");
  CHECK_FALSE(grads_finite(params));
  CHECK_FALSE(grads_finite(params, &bad));
  CHECK(bad == "a");
  eftest::check_throws_with([&] { clip_grad_norm(params, 0.f); }, {"clip_grad_norm", "'max_norm'"});
}

TEST_CASE("parameter groups: each its own weight decay and learning-rate scale, one schedule") {
  // Two groups in one AdamW equal two AdamW, each with that group's settings; set_lr moves both.
  Param<double> a = make_param<double>(), b = make_param<double>();
  Param<double> a2 = make_param<double>(), b2 = make_param<double>();
  std::vector<ParamGroup<double>> groups(2);
  groups[0].params = {{"a", &a}};  // the optimizer's weight decay
  groups[1].params = {{"b", &b}};
  groups[1].weight_decay = 0.0;
  groups[1].lr_scale = 0.5;
  AdamW<double> grouped(groups, 0.1, 0.9, 0.999, 1e-8, 0.2);
  AdamW<double> alone_a(ParamList<double>{{"a", &a2}}, 0.1, 0.9, 0.999, 1e-8, 0.2);
  AdamW<double> alone_b(ParamList<double>{{"b", &b2}}, 0.05, 0.9, 0.999, 1e-8, 0.0);
  for (int step = 0; step < 3; ++step) {
    for (Param<double>* p : {&a, &b, &a2, &b2}) set_grad(*p, step);
    grouped.set_lr(0.1 / (step + 1));
    alone_a.set_lr(0.1 / (step + 1));
    alone_b.set_lr(0.05 / (step + 1));
    grouped.step();
    alone_a.step();
    alone_b.step();
  }
  CHECK((a.value - a2.value).cwiseAbs().maxCoeff() < 1e-15);
  CHECK((b.value - b2.value).cwiseAbs().maxCoeff() < 1e-15);
  CHECK(grouped.params().size() == 2);

  SGD<double> sgd(groups, 0.1, 0.0, 0.2);
  set_grad(a, 0);
  set_grad(b, 0);
  const MatD a0 = a.value, b0 = b.value;
  sgd.step();
  CHECK((a.value - (a0 - 0.1 * (a.grad + 0.2 * a0))).cwiseAbs().maxCoeff() < 1e-15);
  CHECK((b.value - (b0 - 0.05 * b.grad)).cwiseAbs().maxCoeff() < 1e-15);

  groups[1].lr_scale = -1.0;
  eftest::check_throws_with([&] { AdamW<double>(groups, 0.1); },
                            {"AdamW::AdamW", "'groups[].lr_scale'", "-1"});
}

TEST_CASE("weight_decay_groups: decay on weight matrices, none on vectors and embedding tables") {
  Param<float> w(3, 2), bias(1, 3, true), norm(1, 2, true), emb(5, 2), pos(4, 2);
  const ParamList<float> params{{"layers.0.linear1.weight", &w},
                                {"layers.0.linear1.bias", &bias},
                                {"layers.0.norm1.weight", &norm},
                                {"embedding.weight", &emb},
                                {"position.weight", &pos}};
  const std::vector<ParamGroup<float>> groups = weight_decay_groups(params, 0.1);
  REQUIRE(groups.size() == 2);
  CHECK(groups[0].weight_decay == 0.1);
  REQUIRE(groups[0].params.size() == 1);
  CHECK(groups[0].params[0].name == "layers.0.linear1.weight");
  CHECK(groups[1].weight_decay == 0.0);
  CHECK(groups[1].params.size() == 4);
  // Hyperparameters are plain doubles: the Scalar comes from the parameters.
  AdamW opt(params, 3e-4);
  CHECK(opt.lr() == 3e-4f);
}

TEST_CASE("detail::parallel_over_rows visits every row of every matrix once, in fixed units") {
  // Shapes with empty matrices, single rows, rows longer than a unit and a thread's share.
  const std::vector<std::pair<Index, Index>> shapes = {
      {0, 5}, {1, 3}, {300, 40}, {5, 0}, {1, 50000}, {7, 3}, {2000, 17}, {1, 1}, {64, 64}};
  const int saved = max_threads();
  std::vector<std::vector<Index>> unit_of_row;  // with one thread: the first row of its unit
  for (int threads : {1, 2, 3}) {
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
    std::vector<std::vector<std::atomic<int>>> visits;
    std::vector<std::vector<std::atomic<Index>>> unit_start;
    for (const auto& s : shapes) {
      visits.emplace_back(static_cast<size_t>(s.first));
      unit_start.emplace_back(static_cast<size_t>(s.first));
    }
    detail::parallel_over_rows(shapes, 1.0, [&](size_t i, Index begin, Index n) {
      for (Index r = begin; r < begin + n; ++r) {
        ++visits[i][static_cast<size_t>(r)];
        unit_start[i][static_cast<size_t>(r)] = begin;
      }
    });
    for (size_t i = 0; i < shapes.size(); ++i) {
      if (threads == 1) unit_of_row.emplace_back();
      for (size_t r = 0; r < visits[i].size(); ++r) {
        CAPTURE(threads);
        CAPTURE(i);
        CAPTURE(r);
        CHECK(visits[i][r] == (shapes[i].second == 0 ? 0 : 1));
        // The same units for every thread count (so the same SIMD heads and tails).
        if (threads == 1)
          unit_of_row[i].push_back(unit_start[i][r]);
        else
          CHECK(unit_start[i][r] == unit_of_row[i][r]);
      }
    }
  }
#ifdef _OPENMP
  omp_set_num_threads(saved);
#endif
  (void)saved;
}

namespace {

/// ps[from, to), named p<index>.
ParamList<float> named_params(std::vector<Param<float>>& ps, size_t from, size_t to) {
  ParamList<float> out;
  for (size_t i = from; i < to; ++i) out.push_back({"p" + std::to_string(i), &ps[i]});
  return out;
}

using MakeOptimizer = std::function<std::unique_ptr<Optimizer<float>>(ParamList<float>)>;

/// SGD with momentum, Adam and AdamW, each with weight decay, over a list.
std::vector<MakeOptimizer> optimizer_makes() {
  return {[](ParamList<float> ps) { return std::make_unique<SGD<float>>(ps, 0.1, 0.9, 0.01); },
          [](ParamList<float> ps) {
            return std::make_unique<Adam<float>>(ps, 0.01, 0.9, 0.99, 1e-8, 0.1);
          },
          [](ParamList<float> ps) { return std::make_unique<AdamW<float>>(ps, 0.01); }};
}

}  // namespace

TEST_CASE("SGD and Adam step a list of parameters as they step each one alone") {
  // One optimizer over all (its rows shared among threads across parameters; with 2 threads the
  // cut falls inside the 3000 x 40 one) against one optimizer per parameter: the update is
  // elementwise, so the results are the same, bit for bit.
  const std::vector<std::pair<Index, Index>> shapes = {{1, 5}, {3000, 40}, {7, 3}, {1, 400}};
  Rng rng(11);
  std::vector<Param<float>> together, alone;
  for (const auto& s : shapes) {
    Param<float> p(s.first, s.second);
    p.value = eftest::random_matrix<float>(s.first, s.second, rng);
    together.push_back(p);
    alone.push_back(p);
  }
  for (const MakeOptimizer& make : optimizer_makes()) {
    auto all = make(named_params(together, 0, shapes.size()));
    std::vector<std::unique_ptr<Optimizer<float>>> each;
    for (size_t i = 0; i < shapes.size(); ++i) each.push_back(make(named_params(alone, i, i + 1)));
    for (int step = 0; step < 3; ++step) {
      all->zero_grad();
      for (size_t i = 0; i < shapes.size(); ++i) {
        each[i]->zero_grad();
        const Matrix<float> g =
            eftest::random_matrix<float>(shapes[i].first, shapes[i].second, rng);
        together[i].grad += g;
        alone[i].grad += g;
        each[i]->step();
      }
      all->step();
    }
    for (size_t i = 0; i < shapes.size(); ++i) CHECK(together[i].value == alone[i].value);
  }
}

namespace {

/// An optimizer of the tests' own, with Optimizer's step_and_zero_grad: w -= lr g.
class PlainStep : public Optimizer<float> {
 public:
  explicit PlainStep(ParamList<float> params)
      : Optimizer<float>({{std::move(params), {}, 1.0}}, 0.5, 0.0, "PlainStep") {}
  void step() override {
    check_shapes();
    ++steps_;
    for (const auto& p : params_) p.param->value -= lr_ * p.param->grad;
  }
};

}  // namespace

TEST_CASE("step_and_zero_grad takes step()'s step and leaves every gradient zero") {
  // Several threads' units of rows, and Adam's chunks cut mid-row ({1000, 37}).
  const std::vector<std::pair<Index, Index>> shapes = {{1, 5}, {3000, 40}, {1000, 37}, {7, 3}};
  std::vector<MakeOptimizer> makes = optimizer_makes();
  makes.push_back(
      [](ParamList<float> ps) { return std::make_unique<SGD<float>>(ps, 0.1, 0.0, 0.01); });
  makes.push_back([](ParamList<float> ps) { return std::make_unique<PlainStep>(ps); });
  const int saved = max_threads();
#ifdef _OPENMP
  omp_set_num_threads(2);  // the units of rows shared by two threads
#endif
  for (const MakeOptimizer& make : makes) {
    Rng rng(5);
    std::vector<Param<float>> plain, fused;
    for (const auto& s : shapes) {
      plain.emplace_back(s.first, s.second);
      plain.back().value = eftest::random_matrix<float>(s.first, s.second, rng);
      fused.push_back(plain.back());
    }
    const auto a = make(named_params(plain, 0, shapes.size()));
    const auto b = make(named_params(fused, 0, shapes.size()));
    CAPTURE(a->kind());
    for (int step = 0; step < 3; ++step) {
      a->zero_grad();  // b's gradients were zeroed by its last step
      for (size_t i = 0; i < shapes.size(); ++i) {
        const Matrix<float> g =
            eftest::random_matrix<float>(shapes[i].first, shapes[i].second, rng);
        plain[i].grad += g;
        fused[i].grad += g;
      }
      a->step();
      b->step_and_zero_grad();
      for (size_t i = 0; i < shapes.size(); ++i) {
        CHECK(fused[i].value == plain[i].value);
        CHECK(fused[i].grad.isZero(0));
      }
    }
    CHECK(b->steps() == 3);
    const auto sa = a->state(), sb = b->state();
    REQUIRE(sa.buffers.size() == sb.buffers.size());
    for (size_t k = 0; k < sa.buffers.size(); ++k)
      CHECK(sa.buffers[k].second == sb.buffers[k].second);

    // A parameter that changed shape: the throw changes nothing, gradients included.
    fused[0].value.resize(2, 5);
    fused[0].grad.resize(2, 5);
    fused[1].grad.setConstant(1.0f);
    const Matrix<float> before = fused[1].value;
    const std::string func =
        b->kind() + (b->kind() == "PlainStep" ? "::step" : "::step_and_zero_grad");
    eftest::check_throws_with([&] { b->step_and_zero_grad(); }, {func, "'p0'", "(2, 5)"});
    CHECK(b->steps() == 3);
    CHECK(fused[1].value == before);
    CHECK((fused[1].grad.array() == 1.0f).all());
  }
#ifdef _OPENMP
  omp_set_num_threads(saved);
#endif
}

TEST_CASE("An optimizer rejects a parameter listed twice; zero_grad clears it once") {
  Param<double> p = make_param<double>();
  const ParamList<double> twice = {{"a", &p}, {"b", &p}};
  eftest::check_throws_with([&] { Adam<double>{twice}; },
                            {"Adam::Adam", "'params'", "'b' twice", "'a'"});
  std::vector<ParamGroup<double>> groups(2);
  groups[0].params = {{"a", &p}};
  groups[1].params = {{"b", &p}};
  eftest::check_throws_with([&] { SGD<double>(groups, 0.1); }, {"SGD::SGD", "'b' twice"});
  p.grad.setConstant(2.0);
  zero_grad(twice);
  CHECK(p.grad.isZero());
}

TEST_CASE("detail::parallel_assign gives the serial assignment, also when it reads its target") {
  Rng rng(3);
  for (Index rows : {Index(0), Index(1), Index(3), Index(4000)}) {
    const Matrix<float> a = eftest::random_matrix<float>(rows, 33, rng);
    const Matrix<float> b = eftest::random_matrix<float>(rows, 33, rng);
    Matrix<float> sum;
    detail::parallel_assign(sum, a + b);
    CHECK(sum == Matrix<float>(a + b));
    Matrix<float> acc = a;
    detail::parallel_assign(acc, acc + b);  // reads its target, as dx += dy
    CHECK(acc == Matrix<float>(a + b));
  }
}
