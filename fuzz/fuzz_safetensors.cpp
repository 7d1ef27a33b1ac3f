// libFuzzer target: the safetensors reader on arbitrary bytes.
//
// Every input must end in success or in eigenformer::IoError / ArgumentError: no crash, hang,
// leak, sanitizer report or other exception. The reader takes paths, so the bytes go to an
// in-memory file (memfd) read back through /proc/self/fd/N.
//
// Build and run: tools/fuzz.sh (see fuzz/README.md).
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <eigenformer/io/safetensors.hpp>

namespace ef = eigenformer;

namespace {

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_safetensors: %s\n", what.c_str());
  std::abort();
}

/// One in-memory file, rewritten for every input.
class MemFile {
 public:
  MemFile() : fd_(::memfd_create("fuzz_safetensors", MFD_CLOEXEC)) {
    if (fd_ < 0) fail("memfd_create failed");
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  const std::string& write(const std::uint8_t* data, std::size_t size) {
    if (::ftruncate(fd_, 0) != 0) fail("ftruncate failed");
    std::size_t done = 0;
    while (done < size) {
      const ssize_t put = ::pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
      if (put <= 0) fail("pwrite failed");
      done += static_cast<std::size_t>(put);
    }
    return path_;
  }

 private:
  int fd_;
  std::string path_;
};

/// The parameters of a Linear(3 -> 2) layer, as the library names them: weight (2, 3), bias (2).
template <class Scalar>
struct LinearParams {
  ef::Param<Scalar> weight{2, 3};
  ef::Param<Scalar> bias{1, 2, /*vector=*/true};
  ef::ParamList<Scalar> list() { return {{"weight", &weight}, {"bias", &bias}}; }
};

/// Loads into fresh parameters; on failure checks nothing changed (loading is all-or-nothing).
template <class Scalar>
void try_load(const std::string& path) {
  LinearParams<Scalar> p;
  p.weight.value.setConstant(Scalar(7));
  p.bias.value.setConstant(Scalar(7));
  try {
    ef::load_safetensors(path, p.list());
  } catch (const ef::IoError&) {
    if (!(p.weight.value.array() == Scalar(7)).all() || !(p.bias.value.array() == Scalar(7)).all())
      fail("load_safetensors threw but changed a parameter");
  }
}

void check_header(const ef::SafetensorsHeader& h, std::size_t size) {
  // A checked header's entries tile the data section: check the reader's claims.
  if (h.header_size + h.data_size + 8 != size) fail("header_size + data_size + 8 != file size");
  std::uint64_t total = 0;
  for (const auto& kv : h.tensors) {
    const auto& t = kv.second;
    if (t.end < t.begin || t.end > h.data_size) fail("accepted tensor '" + kv.first + "' out of range");
    total += t.end - t.begin;
  }
  if (total != h.data_size) fail("accepted tensors do not cover the data section exactly");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static MemFile file;
  const std::string& path = file.write(data, size);
  try {
    check_header(ef::read_safetensors_header(path), size);
  } catch (const ef::IoError&) {
  }
  try_load<float>(path);
  try_load<double>(path);
  return 0;
}
