#include <signal.h>
#include <sys/resource.h>

#include <eigenformer/io/safetensors.hpp>
#include <filesystem>
#include <functional>

#include "test_util.hpp"

using namespace eigenformer;
namespace fs = std::filesystem;
using eftest::read_bytes;
using eftest::write_bytes;
using Json = nlohmann::json;

namespace {

/// A fresh directory under the system temp directory, removed with everything in it.
struct TempDir {
  fs::path dir;
  TempDir() {
    std::random_device rd;
    dir = fs::temp_directory_path() / ("eigenformer-st-" + std::to_string(rd()));
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string file(const std::string& name) const { return (dir / name).string(); }
  bool has_temp_files() const {
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().filename().string().find(".tmp-") != std::string::npos) return true;
    return false;
  }
};

std::string u64_le(std::uint64_t v) {
  std::string s(8, '\0');
  for (int k = 0; k < 8; ++k) s[k] = static_cast<char>(v >> (8 * k));
  return s;
}

/// Rewrites a file with header text `header` (padded) and data section `data`.
void write_file(const std::string& path, std::string header, const std::string& data) {
  header.append((8 - header.size() % 8) % 8, ' ');
  write_bytes(path, u64_le(header.size()) + header + data);
}

/// Splits a saved file into its parsed header and its data section.
std::pair<Json, std::string> split_file(const std::string& path) {
  const std::string bytes = read_bytes(path);
  std::uint64_t n = 0;
  for (int k = 7; k >= 0; --k) n = (n << 8) | static_cast<unsigned char>(bytes[k]);
  return {Json::parse(bytes.substr(8, n)), bytes.substr(8 + n)};
}

/// Applies edit to the header of a saved file and appends extra_data to its data section.
void edit_header(const std::string& path, const std::function<void(Json&)>& edit,
                 const std::string& extra_data = "") {
  auto [header, data] = split_file(path);
  edit(header);
  write_file(path, header.dump(), data + extra_data);
}

/// A small model: a matrix, a vector and another matrix parameter.
template <class Scalar>
struct Model {
  Param<Scalar> weight{3, 4};
  Param<Scalar> bias{1, 3, true};
  Param<Scalar> embed{2, 5};

  explicit Model(std::uint64_t seed) {
    Rng rng(seed);
    fill_normal(weight.value, 0.0, 1.0, rng);
    fill_normal(bias.value, 0.0, 1.0, rng);
    fill_normal(embed.value, 0.0, 1.0, rng);
  }
  ParamList<Scalar> params() {
    return {{"linear.weight", &weight}, {"linear.bias", &bias}, {"embed.weight", &embed}};
  }
  std::vector<Matrix<Scalar>> values() { return {weight.value, bias.value, embed.value}; }
};

template <class F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const IoError& e) {
    return e.what();
  }
  return "(no IoError thrown)";
}

/// Loading path into a fresh model must fail with the fragments and change no parameter.
void check_load_fails(const std::string& path, const std::vector<std::string>& fragments) {
  Model<float> m(99);
  const auto before = m.values();
  std::vector<std::string> all = {"eigenformer::load_safetensors", path};
  all.insert(all.end(), fragments.begin(), fragments.end());
  eftest::check_throws_with<IoError>([&] { load_safetensors(path, m.params()); }, all);
  CHECK(m.values() == before);
}

}  // namespace

TEST_CASE_TEMPLATE("safetensors round trip is exact in the native dtype", Scalar, float, double) {
  TempDir tmp;
  const std::string path = tmp.file("model.safetensors");
  Model<Scalar> saved(1);
  save_safetensors(path, saved.params());
  Model<Scalar> loaded(2);
  REQUIRE(loaded.values() != saved.values());
  load_safetensors(path, loaded.params());
  CHECK(loaded.values() == saved.values());

  const SafetensorsHeader h = read_safetensors_header(path);
  const std::string dtype = std::is_same<Scalar, float>::value ? "F32" : "F64";
  const std::uint64_t width = sizeof(Scalar);
  REQUIRE(h.tensors.size() == 3);
  const SafetensorsTensor& w = h.tensors.at("linear.weight");
  const SafetensorsTensor& b = h.tensors.at("linear.bias");
  const SafetensorsTensor& e = h.tensors.at("embed.weight");
  CHECK(w.dtype == dtype);
  CHECK(w.shape == std::vector<Index>{3, 4});
  CHECK(b.shape == std::vector<Index>{3});
  CHECK(e.shape == std::vector<Index>{2, 5});
  // Laid out in ParamList order.
  CHECK((w.begin == 0 && w.end == 12 * width));
  CHECK((b.begin == 12 * width && b.end == 15 * width));
  CHECK((e.begin == 15 * width && e.end == 25 * width));
  CHECK(h.header_size % 8 == 0);
  CHECK(h.data_size == 25 * width);
  CHECK(fs::file_size(path) == 8 + h.header_size + h.data_size);
  CHECK(h.metadata.empty());
  CHECK_FALSE(split_file(path).first.contains("__metadata__"));
  CHECK_FALSE(tmp.has_temp_files());
}

TEST_CASE("safetensors writes little-endian IEEE values in row-major order") {
  TempDir tmp;
  const std::string path = tmp.file("m.safetensors");
  Param<double> p(2, 2);
  p.value << 1.0, 2.0, -0.5, 0.0;
  save_safetensors<double>(path, {{"p", &p}}, {}, Dtype::F32);
  const std::string data = split_file(path).second;
  const std::string expected("\x00\x00\x80\x3f\x00\x00\x00\x40\x00\x00\x00\xbf\x00\x00\x00\x00",
                             16);
  CHECK(data == expected);
}

TEST_CASE("safetensors converts between F32 files and double parameters") {
  TempDir tmp;
  const std::string f32 = tmp.file("f32.safetensors");
  const std::string f64 = tmp.file("f64.safetensors");
  Model<double> d(3);
  save_safetensors(f32, d.params(), {}, Dtype::F32);
  CHECK(read_safetensors_header(f32).tensors.at("linear.weight").dtype == "F32");

  Model<double> d_back(4);
  load_safetensors(f32, d_back.params());
  CHECK(d_back.weight.value == d.weight.value.cast<float>().cast<double>());
  CHECK(d_back.embed.value == d.embed.value.cast<float>().cast<double>());
  Model<float> f(5);
  load_safetensors(f32, f.params());
  CHECK(f.weight.value == d.weight.value.cast<float>());
  CHECK(f.bias.value == d.bias.value.cast<float>());

  // Float parameters saved as F64 come back exactly in float and in double.
  save_safetensors(f64, f.params(), {}, Dtype::F64);
  CHECK(read_safetensors_header(f64).tensors.at("linear.bias").dtype == "F64");
  Model<double> d2(6);
  load_safetensors(f64, d2.params());
  CHECK(d2.weight.value == f.weight.value.cast<double>());
  Model<float> f2(7);
  load_safetensors(f64, f2.params());
  CHECK(f2.values() == f.values());
}

TEST_CASE("safetensors metadata round trips") {
  TempDir tmp;
  const std::string path = tmp.file("meta.safetensors");
  Model<float> m(8);
  const std::map<std::string, std::string> meta = {
      {"format", "pt"}, {"step", "1200"}, {"note", "quotes \" and unicode \xc3\xa9"}};
  save_safetensors(path, m.params(), meta);
  CHECK(read_safetensors_metadata(path) == meta);
  CHECK(read_safetensors_header(path).metadata == meta);
  Model<float> back(9);
  load_safetensors(path, back.params());
  CHECK(back.values() == m.values());
}

TEST_CASE("safetensors loads a file written by an independent Python writer") {
  const std::string path = std::string(EIGENFORMER_FIXTURES_DIR) + "/tiny.safetensors";
  const SafetensorsHeader h = read_safetensors_header(path);
  CHECK(h.metadata == std::map<std::string, std::string>{
                          {"format", "pt"}, {"writer", "make_safetensors_fixture.py"}});
  REQUIRE(h.tensors.size() == 3);
  CHECK(h.tensors.at("proj.bias").dtype == "F64");
  CHECK((h.tensors.at("proj.bias").begin == 0 && h.tensors.at("proj.bias").end == 24));
  CHECK(h.tensors.at("proj.weight").shape == std::vector<Index>{3, 2});
  CHECK(h.tensors.at("embed.weight").begin == 48);

  Param<float> bias(1, 3, true), weight(3, 2), embed(2, 2);
  load_safetensors<float>(
      path, {{"proj.bias", &bias}, {"proj.weight", &weight}, {"embed.weight", &embed}});
  Matrix<float> w(3, 2), e(2, 2), b(1, 3);
  w << 0.5f, -1.25f, 2.0f, 3.5f, -0.125f, 1024.0f;
  e << 1.0f, 0.0f, -0.0f, 6.103515625e-05f;
  b << 1.5f, -2.0f, 0.25f;
  CHECK(weight.value == w);
  CHECK(embed.value == e);
  CHECK(bias.value == b);
  CHECK(std::signbit(embed.value(1, 0)));

  Param<double> bias_d(1, 3, true), weight_d(3, 2), embed_d(2, 2);
  load_safetensors<double>(
      path, {{"proj.bias", &bias_d}, {"proj.weight", &weight_d}, {"embed.weight", &embed_d}});
  CHECK(weight_d.value == w.cast<double>());
  CHECK(bias_d.value == b.cast<double>());
}

TEST_CASE("safetensors rejects unreadable and truncated files, changing nothing") {
  TempDir tmp;
  const std::string path = tmp.file("m.safetensors");
  Model<float> m(10);
  save_safetensors(path, m.params());
  const std::string good = read_bytes(path);
  const std::uint64_t n = read_safetensors_header(path).header_size;

  check_load_fails(tmp.file("absent.safetensors"), {"cannot open for reading", "No such file"});
  check_load_fails(tmp.dir.string(), {"not a regular file"});
  eftest::check_throws_with<IoError>([&] { read_safetensors_metadata(tmp.file("absent")); },
                 {"eigenformer::read_safetensors_metadata", "cannot open for reading"});

  write_bytes(path, good.substr(0, 5));
  check_load_fails(path, {"truncated: 5 bytes, too short for the 8-byte header length"});
  write_bytes(path, good.substr(0, 8 + n / 2));
  check_load_fails(path, {"truncated header: header length " + std::to_string(n),
                          "runs past the end of the file"});
  write_bytes(path, good.substr(0, good.size() - 4));
  check_load_fails(path, {"truncated data: tensors need 100 bytes of data, the file has 96"});
  write_bytes(path, good + "junk");
  check_load_fails(path, {"data section has 104 bytes, but the tensors cover only 100"});
  write_bytes(path, u64_le(std::uint64_t(1) << 62) + good.substr(8));
  check_load_fails(path, {"truncated header: header length 4611686018427387904"});
}

TEST_CASE("safetensors rejects malformed or lying headers, changing nothing") {
  TempDir tmp;
  const std::string path = tmp.file("m.safetensors");
  Model<float> m(11);
  const auto resave = [&] { save_safetensors(path, m.params()); };

  resave();
  std::string bytes = read_bytes(path);
  bytes[8] = 'x';
  write_bytes(path, bytes);
  check_load_fails(path, {"header is not valid JSON"});

  write_file(path, "[1, 2]", "");
  check_load_fails(path, {"header is not a JSON object"});
  write_file(path,
             R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
             R"( "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})",
             std::string(4, '\0'));
  check_load_fails(path, {"header names 'a' twice"});

  resave();
  edit_header(path, [](Json& h) { h["linear.bias"].erase("dtype"); });
  check_load_fails(path, {"tensor 'linear.bias': header entry has no 'dtype'"});
  resave();
  edit_header(path, [](Json& h) { h["linear.bias"]["data_offsets"] = {48}; });
  check_load_fails(path, {"tensor 'linear.bias': data_offsets is not [begin, end]: [48]"});
  resave();
  edit_header(path, [](Json& h) { h["linear.bias"]["shape"] = {-3}; });
  check_load_fails(path, {"tensor 'linear.bias': shape entry -3 is not a non-negative integer"});
  resave();
  edit_header(path, [](Json& h) { h["linear.weight"]["shape"] = {3, 5}; });
  check_load_fails(path, {"tensor 'linear.weight': data_offsets [0, 48] hold 48 bytes, but shape "
                          "[3, 5] of F32 needs 60"});
  resave();
  edit_header(
      path,
      [](Json& h) {
        h["linear.bias"]["data_offsets"] = {52, 64};
      },
      std::string(4, '\0'));
  check_load_fails(path, {"tensor 'linear.bias': data_offsets [52, 64] leave a gap after the "
                          "previous tensor, which ends at 48"});
  resave();
  edit_header(path, [](Json& h) { h["linear.bias"]["data_offsets"] = {44, 56}; });
  check_load_fails(path, {"tensor 'linear.bias': data_offsets [44, 56] overlap"});
  resave();
  edit_header(path, [](Json& h) { h["__metadata__"] = {{"k", 1}}; });
  check_load_fails(path, {"'__metadata__' value for 'k' is not a string"});
  CHECK_FALSE(tmp.has_temp_files());
}

TEST_CASE("safetensors rejects wrong dtypes, names and shapes, changing nothing") {
  TempDir tmp;
  const std::string path = tmp.file("m.safetensors");
  Model<float> m(12);
  save_safetensors(path, m.params());
  edit_header(path, [](Json& h) { h["linear.bias"]["dtype"] = "F17"; });
  check_load_fails(path, {"tensor 'linear.bias': unknown dtype 'F17'"});

  save_safetensors(path, m.params());
  edit_header(path, [](Json& h) { h["linear.bias"]["dtype"] = "I32"; });
  check_load_fails(path, {"tensor 'linear.bias': dtype I32 is not supported for loading"});
  CHECK(read_safetensors_header(path).tensors.at("linear.bias").dtype == "I32");

  ParamList<float> fewer = m.params();
  fewer.pop_back();
  save_safetensors(path, fewer);
  check_load_fails(path, {"missing tensors (in the model, not in the file): 'embed.weight'"});

  Param<float> extra(1, 2, true);
  ParamList<float> more = m.params();
  more.push_back({"extra.a", &extra});
  more.push_back({"extra.b", &extra});
  save_safetensors(path, more);
  check_load_fails(path,
                   {"unexpected tensors (in the file, not in the model): 'extra.a', 'extra.b'"});

  fewer.push_back({"other", &extra});
  save_safetensors(path, fewer);
  check_load_fails(path, {"missing tensors (in the model, not in the file): 'embed.weight'; "
                          "unexpected tensors (in the file, not in the model): 'other'"});

  Param<float> wide(3, 5);
  save_safetensors<float>(
      path, {{"linear.weight", &wide}, {"linear.bias", &m.bias}, {"embed.weight", &m.embed}});
  check_load_fails(path, {"tensor 'linear.weight': shape [3, 5] in file, [3, 4] in model"});

  // A 1-D tensor loads only into a vector parameter, a (1, n) tensor only into a matrix one.
  Param<float> row(1, 3);
  save_safetensors<float>(
      path, {{"linear.weight", &m.weight}, {"linear.bias", &row}, {"embed.weight", &m.embed}});
  check_load_fails(path, {"tensor 'linear.bias': shape [1, 3] in file, [3] in model"});
  Param<float> vec(1, 3, true);
  save_safetensors<float>(path, {{"v", &vec}});
  eftest::check_throws_with<IoError>(
      [&] {
        load_safetensors<float>(path, {{"v", &row}});
      },
      {"tensor 'v': shape [3] in file, [1, 3] in model"});
  CHECK(row.value.isZero());
}

TEST_CASE("safetensors rejects bad parameter lists with ArgumentError") {
  TempDir tmp;
  const std::string path = tmp.file("m.safetensors");
  Param<float> a(1, 2);
  eftest::check_throws_with(
      [&] {
        save_safetensors<float>(path, {{"a", &a}, {"a", &a}});
      },
      {"save_safetensors", "'params'", "has the name 'a' twice"});
  eftest::check_throws_with(
      [&] {
        load_safetensors<float>(path, {{"a", &a}, {"a", &a}});
      },
      {"load_safetensors", "'params'", "has the name 'a' twice"});
  eftest::check_throws_with(
      [&] {
        save_safetensors<float>(path, {{"a", nullptr}});
      },
      {"save_safetensors", "null parameter 'a'"});
  eftest::check_throws_with(
      [&] {
        save_safetensors<float>(path, {{"__metadata__", &a}});
      },
      {"save_safetensors", "invalid name '__metadata__'"});
  eftest::check_throws_with(
      [&] {
        save_safetensors<float>(path, {{"", &a}});
      },
      {"save_safetensors", "invalid name ''"});
  eftest::check_throws_with(
      [&] {
        save_safetensors<float>(path, {{"bad\xff", &a}});
      },
      {"save_safetensors", "not valid UTF-8"});
  eftest::check_throws_with([&] { save_safetensors<float>("", {{"a", &a}}); },
                            {"save_safetensors", "'path'", "is empty, expected a file name"});
  eftest::check_throws_with([&] { save_safetensors<float>(path, {{"a", &a}}, {}, Dtype(5)); },
                            {"save_safetensors", "'dtype'", "is not a Dtype (value 5)",
                             "expected F32 or F64"});
  eftest::check_throws_with([&] { dtype_name(Dtype(5)); },
                            {"dtype_name", "'d'", "is not a Dtype (value 5)"});
  a.value.setConstant(3.0f);
  eftest::check_throws_with([&] { load_safetensors<float>("", {{"a", &a}}); },
                            {"load_safetensors", "'path'", "is empty"});
  CHECK((a.value.array() == 3.0f).all());
  eftest::check_throws_with([&] { read_safetensors_header(""); },
                            {"read_safetensors_header", "'path'", "is empty"});
  eftest::check_throws_with([&] { read_safetensors_metadata(""); },
                            {"read_safetensors_metadata", "'path'", "is empty"});
  CHECK_FALSE(fs::exists(path));
  CHECK_FALSE(tmp.has_temp_files());
}

TEST_CASE("a failed save leaves the previous file intact and no temporary file") {
  TempDir tmp;
  const std::string path = tmp.file("m.safetensors");
  Model<float> old(13);
  save_safetensors(path, old.params());
  const std::string old_bytes = read_bytes(path);

  eftest::check_throws_with<IoError>([&] { save_safetensors(tmp.file("no/such/dir/m.safetensors"), old.params()); },
                 {"eigenformer::save_safetensors", "no/such/dir", "cannot create a temporary file",
                  "No such file"});

  fs::create_directory(tmp.file("taken"));
  eftest::check_throws_with<IoError>(
      [&] { save_safetensors(tmp.file("taken"), old.params()); },
      {"eigenformer::save_safetensors", "renaming over the target failed", "Is a directory"});
  CHECK(fs::is_directory(tmp.file("taken")));
  CHECK_FALSE(tmp.has_temp_files());

  // A write that fails part way (the file size limit stands in for a full disk).
  Param<float> big(100, 100);
  rlimit saved_limit{};
  REQUIRE(getrlimit(RLIMIT_FSIZE, &saved_limit) == 0);
  rlimit small = saved_limit;
  small.rlim_cur = 4096;
  auto* old_handler = signal(SIGXFSZ, SIG_IGN);
  REQUIRE(setrlimit(RLIMIT_FSIZE, &small) == 0);
  const std::string msg = error_message([&] { save_safetensors<float>(path, {{"big", &big}}); });
  setrlimit(RLIMIT_FSIZE, &saved_limit);
  signal(SIGXFSZ, old_handler);
  INFO("message: " << msg);
  CHECK(msg.find("eigenformer::save_safetensors") != std::string::npos);
  CHECK(msg.find("writing failed for temporary file") != std::string::npos);
  CHECK(msg.find("File too large") != std::string::npos);
  CHECK(read_bytes(path) == old_bytes);
  CHECK_FALSE(tmp.has_temp_files());

  // A successful save replaces the file.
  Model<float> next(14);
  save_safetensors(path, next.params());
  CHECK(read_bytes(path) != old_bytes);
  Model<float> back(15);
  load_safetensors(path, back.params());
  CHECK(back.values() == next.values());
  CHECK_FALSE(tmp.has_temp_files());
}

TEST_CASE("safetensors handles an empty parameter list") {
  TempDir tmp;
  const std::string path = tmp.file("empty.safetensors");
  save_safetensors<double>(path, {}, {{"k", "v"}});
  CHECK(read_safetensors_header(path).tensors.empty());
  CHECK(read_safetensors_metadata(path).at("k") == "v");
  load_safetensors<double>(path, {});
}
