// The examples' training curves: plot::Curves and plot::write_png (examples/common), and
// `translate train --plot` / `char_lm train --plot` writing a PNG of the size they promise.
#include <doctest/doctest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

#include "../examples/common/curves.hpp"

namespace {

namespace fs = std::filesystem;

struct PngHeader {
  bool valid = false;  // PNG signature, then an IHDR chunk
  unsigned width = 0, height = 0;
};

/// The signature and the IHDR size of a PNG file.
PngHeader png_header(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  unsigned char b[24] = {};
  in.read(reinterpret_cast<char*>(b), sizeof b);
  const unsigned char signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  const auto big_endian = [&](int at) {
    return unsigned(b[at]) << 24 | unsigned(b[at + 1]) << 16 | unsigned(b[at + 2]) << 8 |
           unsigned(b[at + 3]);
  };
  PngHeader h;
  h.valid = in.gcount() == 24 && std::equal(signature, signature + 8, b) &&
            std::memcmp(b + 12, "IHDR", 4) == 0;
  h.width = big_endian(16);
  h.height = big_endian(20);
  return h;
}

/// A fresh empty directory for one test case.
fs::path scratch(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("eigenformer_test_plot_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

/// Whether dir holds a file whose name ends in ".tmp" (a write that was not renamed into place).
bool has_temporary(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".tmp") return true;
  return false;
}

/// The exit status of a shell command (-1 if it did not exit normally). Unused without the
/// examples.
[[maybe_unused]] int run(const std::string& command) {
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

TEST_CASE("Curves: evaluation points, the mean training loss between them, named series") {
  plot::Curves c(10, 4);  // a point every 2 steps
  CHECK_FALSE(c.due(1));
  CHECK(c.due(2));
  CHECK_FALSE(c.due(9));
  CHECK(c.due(10));
  CHECK(plot::Curves(11, 4).due(11));  // the last step always
  CHECK(plot::Curves(3, 20).due(1));   // fewer steps than points: every step

  c.add_step_loss(1.0);
  c.add_step_loss(3.0);
  CHECK(c.record_train(2) == 2.0);
  c.add_step_loss(5.0);
  CHECK(c.record_train(4, 0.5) == 2.5);  // the mean since the last point, scaled
  c.record("validation", 2, 7.0);
  c.record("validation", 4, 6.0);
  const std::vector<plot::Series> s = c.series({{"validation", "valid"}, {"training", "train"}});
  REQUIRE(s.size() == 2);
  CHECK(s[0].name == "valid");
  CHECK(s[0].x == std::vector<double>{2, 4});
  CHECK(s[0].y == std::vector<double>{7, 6});
  CHECK(s[1].y == std::vector<double>{2, 2.5});
  CHECK_THROWS_AS(c.series({{"accuracy", "acc"}}), std::logic_error);
}

TEST_CASE("write_png: a PNG of the requested size through a temporary file; bad input throws") {
  const fs::path dir = scratch("write");
  const plot::Series loss{"loss", {1, 2, 3, 4}, {3.0, 0.5, 0.02, 0.001}};
  const plot::Series acc{"accuracy", {1, 2, 3, 4}, {0, 40, 90, 100}};
  const std::string two = (dir / "two.png").string();
  plot::write_png(
      two, {{"loss", "step", "nats", {loss}, true}, {"acc", "step", "%", {acc}, false, 0, 100}},
      640, 720);
  PngHeader h = png_header(two);
  CHECK(h.valid);
  CHECK(h.width == 640);
  CHECK(h.height == 720);
  const std::string one = (dir / "one.png").string();
  plot::write_png(one, "title", "step", "loss", {loss, {"one point", {2}, {1.0}}}, 500, 300);
  h = png_header(one);
  CHECK(h.valid);
  CHECK(h.width == 500);
  CHECK(h.height == 300);
  CHECK_FALSE(has_temporary(dir));

  const std::string bad = (dir / "bad.png").string();
  CHECK_THROWS_AS(plot::write_png(bad, "t", "x", "y", {{"uneven", {1, 2}, {1}}}),
                  std::runtime_error);
  CHECK_THROWS_AS(plot::write_png(bad, "t", "x", "y", {{"empty", {}, {}}}), std::runtime_error);
  CHECK_FALSE(fs::exists(bad));
  CHECK_THROWS_WITH_AS(plot::check_ready((dir / "missing" / "x.png").string()),
                       doctest::Contains("does not exist"), std::runtime_error);
  CHECK_NOTHROW(plot::check_ready(two));  // PLplot has its pngcairo driver
  fs::remove_all(dir);
}

#if defined(EIGENFORMER_TRANSLATE_EXE) && defined(EIGENFORMER_CHAR_LM_EXE)
TEST_CASE("translate train --plot and char_lm train --plot write their training curves") {
  const fs::path dir = scratch("train");
  const std::string d = dir.string();
  CHECK(run(std::string(EIGENFORMER_TRANSLATE_EXE) + " train --out " + d +
            "/m.safetensors --steps 6 --eval 4 --d-model 16 --d-ff 32 --layers 1 --plot " + d +
            "/translate.png > " + d + "/translate.log 2>&1") == 0);
  PngHeader h = png_header(dir / "translate.png");
  CHECK(h.valid);
  CHECK(h.width == 900);
  CHECK(h.height == 720);

  // Twenty tiny fortunes: every 10th is held out, and that text is the validation curve.
  std::ofstream corpus(dir / "fortunes");
  for (int i = 0; i < 20; ++i) corpus << "fortune number " << i << " says hello\n%\n";
  corpus.close();
  const int status =
      run(std::string(EIGENFORMER_CHAR_LM_EXE) + " train --corpus " + d + "/fortunes --out " + d +
          "/lm.safetensors --steps 6 --context 8 "
          "--batch 2 --layers 1 --d-model 16 --heads 2 --plot " +
          d + "/char_lm.png > " + d + "/char_lm.log 2>&1");
  CHECK((status == 0 || status == 3));  // 3: trained, but (in 6 steps) did not beat the bigram
  h = png_header(dir / "char_lm.png");
  CHECK(h.valid);
  CHECK(h.width == 900);
  CHECK(h.height == 500);
  CHECK_FALSE(has_temporary(dir));

  // A picture that could not be written is an error before any training.
  CHECK(run(std::string(EIGENFORMER_TRANSLATE_EXE) + " train --out " + d + "/n.safetensors " +
            "--steps 6 --plot " + d + "/missing/t.png > " + d + "/bad.log 2>&1") == 1);
  std::ifstream log(dir / "bad.log");
  const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  CHECK(text.find("does not exist") != std::string::npos);
  CHECK(text.find("step") == std::string::npos);
  fs::remove_all(dir);
}
#endif
