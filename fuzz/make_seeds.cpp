// Writes the seed corpora of the fuzz targets (run once; the output is committed):
//   g++ -std=c++17 -I include -I /usr/include/eigen3 fuzz/make_seeds.cpp -o /tmp/make_seeds &&
//   /tmp/make_seeds fuzz/corpus
// Seeds are small valid inputs; the fuzzer mutates them into invalid ones.
#include <cstdint>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <eigenformer/io/safetensors.hpp>

namespace ef = eigenformer;

namespace {

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

/// A file from raw header text and data bytes (the header padded to a multiple of 8).
std::string raw_file(std::string header, const std::string& data) {
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  for (int k = 0; k < 8; ++k) out[k] = static_cast<char>(header.size() >> (8 * k));
  return out + header + data;
}

template <class Scalar>
void save_linear(const std::string& path, const std::map<std::string, std::string>& meta) {
  ef::Param<Scalar> weight(2, 3), bias(1, 2, true);
  for (ef::Index i = 0; i < weight.size(); ++i) weight.value.data()[i] = Scalar(0.5) * Scalar(i);
  bias.value << Scalar(-1), Scalar(2);
  ef::save_safetensors<Scalar>(path, {{"weight", &weight}, {"bias", &bias}}, meta);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string root = argc > 1 ? argv[1] : "fuzz/corpus";
  const std::string st = root + "/fuzz_safetensors/";
  save_linear<float>(st + "linear_f32.safetensors", {});
  save_linear<double>(st + "linear_f64.safetensors", {});
  save_linear<float>(st + "linear_meta.safetensors",
                     {{"eigenformer.model", "transformer"}, {"note", "seed"}});
  ef::Param<float> one(1, 1);
  ef::save_safetensors<float>(st + "other_name.safetensors", {{"w", &one}});
  write_bytes(st + "empty_header.safetensors", raw_file("{}", ""));
  write_bytes(st + "metadata_only.safetensors", raw_file(R"({"__metadata__":{"a":"b"}})", ""));
  // Dtypes the reader parses but cannot load, a scalar and a zero-size tensor.
  write_bytes(st + "mixed_dtypes.safetensors",
              raw_file(R"({"h":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},)"
                       R"("s":{"dtype":"F64","shape":[],"data_offsets":[4,12]},)"
                       R"("z":{"dtype":"I64","shape":[0,3],"data_offsets":[12,12]}})",
                       std::string(12, '\x01')));

  const std::string tr = root + "/fuzz_translate_input/";
  const std::vector<std::string> phrases = {
      "zero", "forty-five", "twelve thousand three hundred forty-five",
      "Nine Hundred Ninety-Nine Thousand  Nine Hundred ninety-nine", "one\thundred\nten", "",
      "fourty", "   -  ", "\xe4\xb8\x80 one", "\xff\xfe hundred"};
  for (size_t i = 0; i < phrases.size(); ++i)
    write_bytes(tr + "phrase_" + std::to_string(i) + ".txt", phrases[i]);
  return 0;
}
