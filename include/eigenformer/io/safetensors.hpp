// Saving and loading parameters in the safetensors format
// (https://github.com/huggingface/safetensors).
//
// A file is: an 8-byte little-endian u64 N; N bytes of JSON header
//   {"name": {"dtype": "F32", "shape": [rows, cols], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value"}}   (optional)
// padded with spaces; then the data section, little-endian, row-major, tensors contiguous with no
// gaps or overlaps, offsets relative to the start of the data section.
//
// Loading is all-or-nothing: the whole file is read and checked (sizes, JSON, dtypes, shapes,
// offsets, names) before any parameter is written. Saving writes a temporary file in the target's
// directory and renames it over the target, so a failed save leaves any previous file intact.
// This header uses POSIX file calls (open, read, write, fsync, rename) and nlohmann-json.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/error.hpp"
#include "../core/param.hpp"
#include "../core/precompiled.hpp"

namespace eigenformer {

/// Element types this library reads into and writes from parameters.
enum class Dtype { F32, F64 };

namespace detail {

/// Throws unless d is one of the enumerators.
inline void check_dtype(std::string_view func, std::string_view arg, Dtype d) {
  require(d == Dtype::F32 || d == Dtype::F64, func, arg, [&] {
    return "is not a Dtype (value " + std::to_string(static_cast<int>(d)) +
           "), expected F32 or F64";
  });
}

}  // namespace detail

/// "F32" or "F64"; ArgumentError for a value that is not an enumerator.
inline const char* dtype_name(Dtype d) {
  detail::check_dtype("dtype_name", "d", d);
  return d == Dtype::F32 ? "F32" : "F64";
}

/// F32 for float parameters, F64 for double.
template <class Scalar>
constexpr Dtype native_dtype() {
  static_assert(std::is_same<Scalar, float>::value || std::is_same<Scalar, double>::value,
                "safetensors I/O supports float and double parameters");
  return std::is_same<Scalar, float>::value ? Dtype::F32 : Dtype::F64;
}

/// A named matrix to write or read: a parameter's value, or other state such as an optimizer's
/// moments (io/training_state.hpp). value must outlive the call it is passed to.
template <class Scalar = float>
struct NamedTensor {
  std::string name;
  Matrix<Scalar>* value = nullptr;
  bool is_vector = false;  // stored as a 1-D tensor of length cols, as Param::is_vector
  /// Shape as a tensor file states it: {cols} for a vector, {rows, cols} otherwise.
  std::vector<Index> shape() const {
    if (is_vector) return {value->cols()};
    return {value->rows(), value->cols()};
  }
};

/// One header entry, as the file states it.
struct SafetensorsTensor {
  std::string dtype;         // e.g. "F32"; any safetensors dtype, supported for loading or not
  std::vector<Index> shape;  // row-major; {} is a scalar
  std::uint64_t begin = 0;   // data_offsets, relative to the start of the data section
  std::uint64_t end = 0;
};

/// A checked header: every entry's size matches its dtype and shape, and the entries tile the data
/// section exactly.
struct SafetensorsHeader {
  std::map<std::string, SafetensorsTensor> tensors;
  std::map<std::string, std::string> metadata;  // "__metadata__", empty if absent
  std::uint64_t header_size = 0;                // N: JSON bytes after the 8-byte length
  std::uint64_t data_size = 0;                  // bytes in the data section
};

namespace detail {

static_assert(std::numeric_limits<float>::is_iec559 && std::numeric_limits<double>::is_iec559,
              "safetensors I/O assumes IEEE-754 float and double");

[[noreturn]] inline void throw_io(std::string_view func, const std::string& path,
                                  const std::string& what) {
  throw IoError("eigenformer::" + std::string(func) + ": file '" + path + "': " + what);
}

inline std::string errno_str() { return std::strerror(errno); }

/// Throws ArgumentError for an empty path (a caller's mistake, not a file's).
inline void check_path(std::string_view func, const std::string& path) {
  require(!path.empty(), func, "path", "is empty, expected a file name");
}

/// Bytes per element of a safetensors dtype; 0 if the dtype is unknown.
inline std::uint64_t st_dtype_bytes(const std::string& d) {
  static const std::map<std::string, std::uint64_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"I64", 8}, {"U64", 8},     {"F64", 8}};
  const auto it = sizes.find(d);
  return it == sizes.end() ? 0 : it->second;
}

inline std::string shape_list(const std::vector<Index>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

inline std::string offsets_str(const SafetensorsTensor& t) {
  return "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "]";
}

inline std::uint64_t get_u64_le(const unsigned char* p) {
  std::uint64_t v = 0;
  for (int k = 7; k >= 0; --k) v = (v << 8) | p[k];
  return v;
}

inline void put_u64_le(unsigned char* p, std::uint64_t v) {
  for (int k = 0; k < 8; ++k) p[k] = static_cast<unsigned char>(v >> (8 * k));
}

/// Decodes one little-endian IEEE value of dtype d (F32 or F64) at p.
inline double get_float_le(const unsigned char* p, Dtype d) {
  std::uint64_t bits = 0;
  const int n = d == Dtype::F32 ? 4 : 8;
  for (int k = n - 1; k >= 0; --k) bits = (bits << 8) | p[k];
  if (d == Dtype::F64) {
    double v;
    std::memcpy(&v, &bits, 8);
    return v;
  }
  const std::uint32_t b32 = static_cast<std::uint32_t>(bits);
  float v;
  std::memcpy(&v, &b32, 4);
  return v;
}

/// Encodes x as a little-endian IEEE value of dtype d at p.
inline void put_float_le(unsigned char* p, double x, Dtype d) {
  std::uint64_t bits = 0;
  if (d == Dtype::F64) {
    std::memcpy(&bits, &x, 8);
  } else {
    const float f = static_cast<float>(x);
    std::uint32_t b32;
    std::memcpy(&b32, &f, 4);
    bits = b32;
  }
  const int n = d == Dtype::F32 ? 4 : 8;
  for (int k = 0; k < n; ++k) p[k] = static_cast<unsigned char>(bits >> (8 * k));
}

/// An open file descriptor, closed on destruction.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }
  /// Closes now; returns false (errno set) if close failed.
  bool close() {
    const int fd = fd_;
    fd_ = -1;
    return ::close(fd) == 0;
  }

 private:
  int fd_;
};

/// Reads exactly n bytes or throws (a short read means the file changed under us).
inline void read_exact(std::string_view func, const std::string& path, int fd, void* buf,
                       std::uint64_t n) {
  auto* p = static_cast<unsigned char*>(buf);
  while (n > 0) {
    const ssize_t got = ::read(fd, p, n);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw_io(func, path, "read failed: " + errno_str());
    if (got == 0) throw_io(func, path, "file ended early while reading (changed during read?)");
    p += got;
    n -= static_cast<std::uint64_t>(got);
  }
}

/// Opens a regular file for reading; returns the descriptor and sets size.
inline int open_for_reading(std::string_view func, const std::string& path, std::uint64_t& size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_io(func, path, "cannot open for reading: " + errno_str());
  Fd owner(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) throw_io(func, path, "cannot stat: " + errno_str());
  if (!S_ISREG(st.st_mode)) throw_io(func, path, "cannot read: not a regular file");
  size = static_cast<std::uint64_t>(st.st_size);
  return owner.release();
}

inline Index parse_dim(std::string_view func, const std::string& path, const std::string& name,
                       const nlohmann::json& v) {
  if (!v.is_number_unsigned() ||
      v.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<Index>::max()))
    throw_io(func, path,
             "tensor '" + name + "': shape entry " + v.dump() + " is not a non-negative integer");
  return static_cast<Index>(v.get<std::uint64_t>());
}

inline SafetensorsTensor parse_entry(std::string_view func, const std::string& path,
                                     const std::string& name, const nlohmann::json& e) {
  const std::string where = "tensor '" + name + "': ";
  if (!e.is_object()) throw_io(func, path, where + "header entry is not a JSON object");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!e.contains(key)) throw_io(func, path, where + "header entry has no '" + key + "'");
  const auto& dt = e["dtype"];
  const auto& shape = e["shape"];
  const auto& off = e["data_offsets"];
  if (!dt.is_string()) throw_io(func, path, where + "dtype is not a string");
  if (!shape.is_array()) throw_io(func, path, where + "shape is not an array");
  if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
      !off[1].is_number_unsigned())
    throw_io(func, path, where + "data_offsets is not [begin, end]: " + off.dump());
  SafetensorsTensor t;
  t.dtype = dt.get<std::string>();
  for (const auto& d : shape) t.shape.push_back(parse_dim(func, path, name, d));
  t.begin = off[0].get<std::uint64_t>();
  t.end = off[1].get<std::uint64_t>();
  return t;
}

/// Checks one entry's dtype is known and its byte range holds product(shape) elements.
inline void check_entry_size(std::string_view func, const std::string& path,
                             const std::string& name, const SafetensorsTensor& t) {
  const std::string where = "tensor '" + name + "': ";
  const std::uint64_t width = st_dtype_bytes(t.dtype);
  if (width == 0) throw_io(func, path, where + "unknown dtype '" + t.dtype + "'");
  if (t.end < t.begin) throw_io(func, path, where + offsets_str(t) + " end before they begin");
  std::uint64_t bytes = width;
  for (const Index d : t.shape) {
    const auto u = static_cast<std::uint64_t>(d);
    if (u != 0 && bytes > std::numeric_limits<std::uint64_t>::max() / u)
      throw_io(func, path, where + "shape " + shape_list(t.shape) + " is too large");
    bytes *= u;
  }
  if (t.end - t.begin != bytes)
    throw_io(func, path,
             where + offsets_str(t) + " hold " + std::to_string(t.end - t.begin) +
                 " bytes, but shape " + shape_list(t.shape) + " of " + t.dtype + " needs " +
                 std::to_string(bytes));
}

/// Checks the entries tile [0, data_size) with no gap, overlap or leftover bytes.
inline void check_layout(std::string_view func, const std::string& path,
                         const SafetensorsHeader& h) {
  std::vector<std::pair<std::uint64_t, std::string>> order;
  for (const auto& kv : h.tensors) order.emplace_back(kv.second.begin, kv.first);
  std::sort(order.begin(), order.end());
  std::uint64_t pos = 0;
  for (const auto& o : order) {
    const SafetensorsTensor& t = h.tensors.at(o.second);
    if (t.begin != pos)
      throw_io(func, path,
               "tensor '" + o.second + "': " + offsets_str(t) +
                   (t.begin > pos ? " leave a gap" : " overlap") +
                   " after the previous tensor, which ends at " + std::to_string(pos));
    pos = t.end;
  }
  if (pos > h.data_size)
    throw_io(func, path,
             "truncated data: tensors need " + std::to_string(pos) +
                 " bytes of data, the file has " + std::to_string(h.data_size));
  if (pos < h.data_size)
    throw_io(func, path,
             "data section has " + std::to_string(h.data_size) +
                 " bytes, but the tensors cover only " + std::to_string(pos));
}

inline std::map<std::string, std::string> parse_metadata(std::string_view func,
                                                         const std::string& path,
                                                         const nlohmann::json& m) {
  std::map<std::string, std::string> out;
  if (!m.is_object()) throw_io(func, path, "'__metadata__' is not a JSON object");
  for (const auto& kv : m.items()) {
    if (!kv.value().is_string())
      throw_io(func, path, "'__metadata__' value for '" + kv.key() + "' is not a string");
    out[kv.key()] = kv.value().get<std::string>();
  }
  return out;
}

/// Parses JSON text, rejecting a name that appears twice at the top level.
inline nlohmann::json parse_json(std::string_view func, const std::string& path,
                                 const std::string& text) {
  std::set<std::string> seen;
  std::string duplicate;
  auto cb = [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& v) {
    if (depth == 1 && ev == nlohmann::json::parse_event_t::key && v.is_string() &&
        !seen.insert(v.get<std::string>()).second && duplicate.empty())
      duplicate = v.get<std::string>();
    return true;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text, cb);
  } catch (const nlohmann::json::exception& e) {
    throw_io(func, path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!duplicate.empty()) throw_io(func, path, "header names '" + duplicate + "' twice");
  if (!j.is_object()) throw_io(func, path, "header is not a JSON object");
  return j;
}

inline SafetensorsHeader parse_header(std::string_view func, const std::string& path,
                                      const std::string& text, std::uint64_t data_size) {
  const nlohmann::json j = parse_json(func, path, text);
  SafetensorsHeader h;
  h.header_size = text.size();
  h.data_size = data_size;
  for (const auto& kv : j.items()) {
    if (kv.key() == "__metadata__") {
      h.metadata = parse_metadata(func, path, kv.value());
      continue;
    }
    SafetensorsTensor t = parse_entry(func, path, kv.key(), kv.value());
    check_entry_size(func, path, kv.key(), t);
    h.tensors.emplace(kv.key(), std::move(t));
  }
  check_layout(func, path, h);
  return h;
}

/// Reads and checks the length and header of an open file of file_size bytes, leaving fd at the
/// start of the data section.
inline SafetensorsHeader read_header(std::string_view func, const std::string& path, int fd,
                                     std::uint64_t file_size) {
  if (file_size < 8)
    throw_io(func, path,
             "truncated: " + std::to_string(file_size) +
                 " bytes, too short for the 8-byte header length");
  unsigned char len[8];
  read_exact(func, path, fd, len, 8);
  const std::uint64_t n = get_u64_le(len);
  if (n > file_size - 8)
    throw_io(func, path,
             "truncated header: header length " + std::to_string(n) +
                 " runs past the end of the file (" + std::to_string(file_size) + " bytes)");
  std::string text(n, '\0');
  read_exact(func, path, fd, &text[0], n);
  return parse_header(func, path, text, file_size - 8 - n);
}

/// Throws ArgumentError if a tensor is null or a name is empty, reserved or repeated.
template <class Scalar>
void check_param_names(std::string_view func, const std::vector<NamedTensor<Scalar>>& params) {
  std::set<std::string> seen;
  for (const auto& p : params) {
    require(p.value != nullptr, func, "params",
            [&] { return "has a null parameter '" + p.name + "'"; });
    require(!p.name.empty() && p.name != "__metadata__", func, "params",
            [&] { return "has the invalid name '" + p.name + "'"; });
    require(seen.insert(p.name).second, func, "params",
            [&] { return "has the name '" + p.name + "' twice"; });
  }
}

/// The values of params as tensors to save or load (a null parameter gives a null value).
template <class Scalar>
std::vector<NamedTensor<Scalar>> tensors_of(const ParamList<Scalar>& params) {
  std::vector<NamedTensor<Scalar>> out;
  for (const auto& p : params)
    out.push_back({p.name, p.param ? &p.param->value : nullptr, p.param && p.param->is_vector});
  return out;
}

/// Names in the model but not in the file, and in the file but not in the model, in one message.
template <class Scalar>
void check_names_match(std::string_view func, const std::string& path,
                       const std::vector<NamedTensor<Scalar>>& params, const SafetensorsHeader& h) {
  std::set<std::string> model;
  std::string missing, unexpected;
  for (const auto& p : params) {
    model.insert(p.name);
    if (!h.tensors.count(p.name)) missing += (missing.empty() ? "'" : ", '") + p.name + "'";
  }
  for (const auto& kv : h.tensors)
    if (!model.count(kv.first)) unexpected += (unexpected.empty() ? "'" : ", '") + kv.first + "'";
  if (missing.empty() && unexpected.empty()) return;
  std::string what;
  if (!missing.empty()) what = "missing tensors (in the model, not in the file): " + missing;
  if (!unexpected.empty())
    what += (what.empty() ? "" : "; ") +
            std::string("unexpected tensors (in the file, not in the model): ") + unexpected;
  throw_io(func, path, what);
}

/// Bytes per element of a dtype that loads into float parameters (F32, F64, and F16 and BF16,
/// widened on load), or throws IoError naming the tensor.
inline std::uint64_t loadable_width(std::string_view func, const std::string& path,
                                    const std::string& name, const SafetensorsTensor& t) {
  if (t.dtype == "F32" || t.dtype == "F64" || t.dtype == "F16" || t.dtype == "BF16")
    return st_dtype_bytes(t.dtype);
  throw_io(func, path,
           "tensor '" + name + "': dtype " + t.dtype +
               " is not supported for loading (only F32, F64, F16 and BF16)");
}

/// Decodes one little-endian value of a loadable dtype at p (F16 and BF16 exactly, with Eigen's
/// half and bfloat16 types: every one of their values is a float).
inline double get_loadable_le(const unsigned char* p, const std::string& dtype) {
  if (dtype == "F32") return get_float_le(p, Dtype::F32);
  if (dtype == "F64") return get_float_le(p, Dtype::F64);
  const auto bits = static_cast<std::uint16_t>(p[0] | (p[1] << 8));
  if (dtype == "F16") return static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(bits));
  return static_cast<float>(Eigen::numext::bit_cast<Eigen::bfloat16>(bits));
}

/// Converts the n elements of file tensor t (a loadable dtype, checked) into out.
template <class Scalar>
void decode_tensor(const std::vector<unsigned char>& data, const SafetensorsTensor& t, Scalar* out,
                   Index n) {
  const std::uint64_t width = st_dtype_bytes(t.dtype);
  for (Index i = 0; i < n; ++i)
    out[i] = static_cast<Scalar>(
        get_loadable_le(&data[t.begin + static_cast<std::uint64_t>(i) * width], t.dtype));
}

template <class Scalar>
void check_tensor_fits(std::string_view func, const std::string& path, const NamedTensor<Scalar>& p,
                       const SafetensorsTensor& t) {
  loadable_width(func, path, p.name, t);
  const std::vector<Index> want = p.shape();
  if (t.shape != want)
    throw_io(func, path,
             "tensor '" + p.name + "': shape " + shape_list(t.shape) + " in file, " +
                 shape_list(want) + " in model");
}

/// A unique temporary file next to path, opened for writing (honours the umask).
inline int create_temp(const std::string& path, std::string& tmp) {
  std::random_device rd;
  for (int attempt = 0; attempt < 100; ++attempt) {
    char suffix[32];
    std::snprintf(suffix, sizeof suffix, ".tmp-%08x", static_cast<unsigned>(rd()));
    tmp = path + suffix;
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0 || errno != EEXIST) return fd;
  }
  errno = EEXIST;
  return -1;
}

inline bool write_all(int fd, const unsigned char* p, std::uint64_t n) {
  while (n > 0) {
    const ssize_t put = ::write(fd, p, n);
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) return false;
    p += put;
    n -= static_cast<std::uint64_t>(put);
  }
  return true;
}

/// The JSON header for params laid out in order, padded with spaces to a multiple of 8 bytes.
template <class Scalar>
std::string make_header(const std::vector<NamedTensor<Scalar>>& params,
                        const std::map<std::string, std::string>& metadata, Dtype dtype) {
  nlohmann::json j = nlohmann::json::object();
  std::uint64_t pos = 0;
  const std::uint64_t width = dtype == Dtype::F32 ? 4 : 8;
  for (const auto& p : params) {
    const std::uint64_t end = pos + width * static_cast<std::uint64_t>(p.value->size());
    j[p.name] = {{"dtype", dtype_name(dtype)}, {"shape", p.shape()}, {"data_offsets", {pos, end}}};
    pos = end;
  }
  if (!metadata.empty()) j["__metadata__"] = metadata;
  std::string text;
  try {
    text = j.dump();
  } catch (const nlohmann::json::exception&) {
    throw_argument("save_safetensors", "params",
                   "or 'metadata' has a string that is not valid UTF-8");
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

/// buf = v's elements as dtype, little-endian, in row-major order (the file's).
template <class Scalar>
void encode_tensor(std::vector<unsigned char>& buf, const Matrix<Scalar>& v, Dtype dtype) {
  const Index width = dtype == Dtype::F32 ? 4 : 8;
  buf.resize(static_cast<size_t>(v.size() * width));
  for (Index i = 0; i < v.size(); ++i)
    put_float_le(&buf[static_cast<size_t>(i * width)], static_cast<double>(v.data()[i]), dtype);
}

/// Writes the length, header and every tensor to fd; false (errno set) on failure.
template <class Scalar>
bool write_contents(int fd, const std::string& header,
                    const std::vector<NamedTensor<Scalar>>& params, Dtype dtype) {
  unsigned char len[8];
  put_u64_le(len, header.size());
  if (!write_all(fd, len, 8)) return false;
  if (!write_all(fd, reinterpret_cast<const unsigned char*>(header.data()), header.size()))
    return false;
  std::vector<unsigned char> buf;
  for (const auto& p : params) {
    encode_tensor(buf, *p.value, dtype);
    if (!write_all(fd, buf.data(), buf.size())) return false;
  }
  return true;
}

/// The metadata key of a data checksum (written by save_training_state; checked by every load).
constexpr const char* kChecksumKey = "eigenformer.data_fnv1a64";

/// FNV-1a (64-bit) of n bytes at p, continuing from hash: catches flipped bits in the data, which
/// the header's sizes and offsets cannot.
inline std::uint64_t fnv1a64(const unsigned char* p, std::uint64_t n,
                             std::uint64_t hash = 0xcbf29ce484222325ull) {
  for (std::uint64_t i = 0; i < n; ++i) hash = (hash ^ p[i]) * 0x100000001b3ull;
  return hash;
}

inline std::string hex64(std::uint64_t v) {
  char buf[20];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

/// The checksum of the data section save_tensors writes for tensors.
template <class Scalar>
std::string data_checksum(const std::vector<NamedTensor<Scalar>>& tensors, Dtype dtype) {
  std::uint64_t hash = fnv1a64(nullptr, 0);
  std::vector<unsigned char> buf;
  for (const auto& t : tensors) {
    encode_tensor(buf, *t.value, dtype);
    hash = fnv1a64(buf.data(), buf.size(), hash);
  }
  return hex64(hash);
}

/// Throws unless the data section matches the checksum in the header's metadata, if it has one.
inline void check_data_checksum(std::string_view func, const std::string& path,
                                const SafetensorsHeader& h,
                                const std::vector<unsigned char>& data) {
  const auto it = h.metadata.find(kChecksumKey);
  if (it == h.metadata.end()) return;
  const std::string got = hex64(fnv1a64(data.data(), data.size()));
  if (got != it->second)
    throw_io(func, path,
             "damaged data: its checksum is " + got + ", the header says " + it->second +
                 " (metadata '" + kChecksumKey + "')");
}

/// Makes a finished rename durable; failure here does not undo the save, so it is ignored.
inline void sync_directory_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace detail

namespace detail {

/// Opens path and reads its checked header; errors name func.
inline SafetensorsHeader read_file_header(std::string_view func, const std::string& path) {
  check_path(func, path);
  std::uint64_t size = 0;
  Fd fd(open_for_reading(func, path, size));
  return read_header(func, path, fd.get(), size);
}

/// Reads path whole: its checked header, and its data section into data; errors name func.
inline SafetensorsHeader read_file(std::string_view func, const std::string& path,
                                   std::vector<unsigned char>& data) {
  check_path(func, path);
  std::uint64_t size = 0;
  Fd fd(open_for_reading(func, path, size));
  SafetensorsHeader h = read_header(func, path, fd.get(), size);
  data.resize(h.data_size);
  read_exact(func, path, fd.get(), data.data(), h.data_size);
  return h;
}

}  // namespace detail

/// Reads and checks a file's header without reading the tensor data.
/// Throws IoError naming the file when it cannot be read or its header is malformed (sizes,
/// JSON, dtypes, offsets), ArgumentError for an empty path.
inline SafetensorsHeader read_safetensors_header(const std::string& path) {
  return detail::read_file_header("read_safetensors_header", path);
}

/// The file's "__metadata__" (empty if it has none).
/// Throws as read_safetensors_header.
inline std::map<std::string, std::string> read_safetensors_metadata(const std::string& path) {
  return detail::read_file_header("read_safetensors_metadata", path).metadata;
}

namespace detail {

/// save_safetensors for any named matrices; errors name func. With checksum, the metadata also
/// gets the data section's checksum (kChecksumKey), which every load then checks.
template <class Scalar>
void save_tensors(const char* func, const std::string& path,
                  const std::vector<NamedTensor<Scalar>>& tensors,
                  const std::map<std::string, std::string>& metadata, Dtype dtype, bool checksum) {
  check_path(func, path);
  check_param_names(func, tensors);
  check_dtype(func, "dtype", dtype);
  std::map<std::string, std::string> meta = metadata;
  if (checksum) meta[kChecksumKey] = data_checksum(tensors, dtype);
  const std::string header = make_header(tensors, meta, dtype);
  std::string tmp;
  Fd fd(create_temp(path, tmp));
  if (fd.get() < 0) throw_io(func, path, "cannot create a temporary file: " + errno_str());
  const char* failed = nullptr;  // the step that failed; errno says why
  if (!write_contents(fd.get(), header, tensors, dtype))
    failed = "writing";
  else if (::fsync(fd.get()) != 0)
    failed = "syncing";
  else if (!fd.close())
    failed = "closing";
  else if (std::rename(tmp.c_str(), path.c_str()) != 0)
    failed = "renaming over the target";
  if (failed) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw_io(
        func, path,
        std::string(failed) + " failed for temporary file '" + tmp + "': " + std::strerror(err));
  }
  sync_directory_of(path);
}

/// load_safetensors for any named matrices; errors name func. check, when set, sees the checked
/// header (metadata included) first, before the names and shapes are compared and before any
/// tensor is written, and may throw to stop the load.
template <class Scalar>
void load_tensors(const char* func, const std::string& path,
                  const std::vector<NamedTensor<Scalar>>& tensors,
                  const std::function<void(const SafetensorsHeader&)>& check) {
  static_assert(std::is_same<Scalar, float>::value || std::is_same<Scalar, double>::value,
                "safetensors I/O supports float and double parameters");
  check_path(func, path);
  check_param_names(func, tensors);
  std::uint64_t size = 0;
  Fd fd(open_for_reading(func, path, size));
  const SafetensorsHeader h = read_header(func, path, fd.get(), size);
  if (check) check(h);
  std::vector<unsigned char> data(h.data_size);
  read_exact(func, path, fd.get(), data.data(), h.data_size);
  check_data_checksum(func, path, h, data);
  check_names_match(func, path, tensors, h);
  for (const auto& p : tensors) check_tensor_fits(func, path, p, h.tensors.at(p.name));
  for (const auto& p : tensors)
    decode_tensor(data, h.tensors.at(p.name), p.value->data(), p.value->size());
}

}  // namespace detail

/// Writes params (name -> value) to path as dtype, with optional string metadata. Replaces any
/// existing file atomically; on failure throws IoError and leaves the old file as it was.
/// Throws ArgumentError for an empty path, a null parameter, an empty, repeated or "__metadata__"
/// name, or a dtype that is not an enumerator.
template <class Scalar>
void save_safetensors(const std::string& path, const ParamList<Scalar>& params,
                      const std::map<std::string, std::string>& metadata = {},
                      Dtype dtype = native_dtype<Scalar>()) {
  detail::save_tensors("save_safetensors", path, detail::tensors_of(params), metadata, dtype,
                       false);
}

/// Loads every parameter from path. Strict: the file must hold exactly the names in params, each
/// with the parameter's shape (Param::shape()) and dtype F32, F64, F16 or BF16 (converted to
/// Scalar).
/// Everything is checked before any parameter changes; on error throws IoError and changes none
/// (ArgumentError for an empty path or a bad parameter list).
template <class Scalar>
void load_safetensors(const std::string& path, const ParamList<Scalar>& params) {
  detail::load_tensors("load_safetensors", path, detail::tensors_of(params), {});
}

// The float and double instantiations, compiled once in eigenformer::precompiled
// (core/precompiled.hpp).
// clang-format off
#define EIGENFORMER_SAFETENSORS_TEMPLATES(S)                                                       \
  EIGENFORMER_FOR(S, void save_safetensors<S>(const std::string& path, const ParamList<S>& params, \
                                              const std::map<std::string, std::string>& metadata,  \
                                              Dtype dtype))                                        \
  EIGENFORMER_FOR(S, void load_safetensors<S>(const std::string& path, const ParamList<S>& params)) \
  EIGENFORMER_FOR(S, void detail::save_tensors<S>(const char* func, const std::string& path,      \
                                                  const std::vector<NamedTensor<S>>& tensors,     \
                                                  const std::map<std::string, std::string>& metadata, \
                                                  Dtype dtype, bool checksum))                    \
  EIGENFORMER_FOR(S, void detail::load_tensors<S>(const char* func, const std::string& path,      \
                  const std::vector<NamedTensor<S>>& tensors,                                     \
                  const std::function<void(const SafetensorsHeader&)>& check))
EIGENFORMER_FUNCTION_TEMPLATES(EIGENFORMER_SAFETENSORS_TEMPLATES)
// clang-format on

}  // namespace eigenformer
