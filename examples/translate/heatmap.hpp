// A PNG heat map of attention weights with text labels, written with stb_image_write (Debian's
// libstb-dev). Labels are drawn from a TrueType font with stb_truetype, so Chinese characters
// appear as themselves: the first CJK font found among Debian's fonts-wqy-zenhei,
// fonts-wqy-microhei and fonts-noto-cjk (or the file in $EIGENFORMER_CJK_FONT). Without one the
// labels fall back to stb_easy_font's ASCII glyphs, and a label that is not ASCII is drawn as
// its ASCII stand-in (ascii_fallback).
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include <eigenformer/core/tensor.hpp>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_TRUETYPE_IMPLEMENTATION
#include <stb/stb_easy_font.h>
#include <stb/stb_image_write.h>
#include <stb/stb_truetype.h>

namespace heatmap {

using eigenformer::Index;

/// An RGB image.
struct Image {
  int width, height;
  std::vector<unsigned char> rgb;
  Image(int w, int h) : width(w), height(h), rgb(size_t(w) * size_t(h) * 3, 255) {}
  void fill(int x0, int y0, int x1, int y1, unsigned char r, unsigned char g, unsigned char b) {
    for (int y = std::max(0, y0); y < std::min(height, y1); ++y)
      for (int x = std::max(0, x0); x < std::min(width, x1); ++x) {
        unsigned char* p = &rgb[(size_t(y) * size_t(width) + size_t(x)) * 3];
        p[0] = r, p[1] = g, p[2] = b;
      }
  }
  /// Darkens pixel (x, y) towards black by coverage in [0, 255] (anti-aliased glyphs).
  void ink(int x, int y, unsigned char coverage) {
    if (x < 0 || y < 0 || x >= width || y >= height) return;
    unsigned char* p = &rgb[(size_t(y) * size_t(width) + size_t(x)) * 3];
    for (int c = 0; c < 3; ++c) p[c] = (unsigned char)(p[c] * (255 - coverage) / 255);
  }
};

/// The code points of UTF-8 text; a byte that starts no valid sequence becomes U+FFFD.
inline std::vector<int> code_points(const std::string& text) {
  std::vector<int> out;
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = (unsigned char)text[i];
    const int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + size_t(len) > text.size()) {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    int cp = len == 1 ? c : c & (0x7F >> len);
    for (int k = 1; k < len; ++k) cp = (cp << 6) | ((unsigned char)text[i + size_t(k)] & 0x3F);
    out.push_back(cp);
    i += size_t(len);
  }
  return out;
}

/// A TrueType/OpenType font (the first face of a collection), or none.
class Font {
 public:
  /// The first file of the candidates that loads; none() when no file does.
  static Font find_cjk() {
    std::vector<std::string> paths;
    if (const char* env = std::getenv("EIGENFORMER_CJK_FONT")) paths.push_back(env);
    for (const char* p : {"/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
                          "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
                          "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"})
      paths.push_back(p);
    for (const std::string& p : paths) {
      Font f(p);
      if (f.ok()) return f;
    }
    return Font("");
  }

  bool ok() const { return loaded_; }
  const std::string& path() const { return path_; }

  /// Draws text with its top-left corner at (x, y), glyphs pixel_height high; returns the width.
  int draw(Image* img, int x, int y, const std::string& text, float pixel_height) const {
    const float scale = stbtt_ScaleForPixelHeight(&info_, pixel_height);
    int ascent, descent, gap;
    stbtt_GetFontVMetrics(&info_, &ascent, &descent, &gap);
    const int baseline = y + int(float(ascent) * scale);
    float pen = float(x);
    for (int cp : code_points(text)) {
      int advance, bearing;
      stbtt_GetCodepointHMetrics(&info_, cp, &advance, &bearing);
      if (img) {
        int w, h, xoff, yoff;
        unsigned char* bitmap =
            stbtt_GetCodepointBitmap(&info_, scale, scale, cp, &w, &h, &xoff, &yoff);
        for (int r = 0; r < h; ++r)
          for (int c = 0; c < w; ++c)
            img->ink(int(pen) + xoff + c, baseline + yoff + r, bitmap[r * w + c]);
        stbtt_FreeBitmap(bitmap, nullptr);
      }
      pen += float(advance) * scale;
    }
    return int(pen) - x;
  }

 private:
  explicit Font(const std::string& path) : path_(path) {
    std::ifstream in(path, std::ios::binary);
    if (path.empty() || !in) return;
    data_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    const auto* bytes = reinterpret_cast<const unsigned char*>(data_.data());
    const int offset = stbtt_GetFontOffsetForIndex(bytes, 0);
    loaded_ = offset >= 0 && stbtt_InitFont(&info_, bytes, offset) != 0;
  }

  std::string path_;
  std::string data_;
  stbtt_fontinfo info_{};
  bool loaded_ = false;
};

/// Draws ASCII text with stb_easy_font, its top-left corner at (x, y), each font pixel `scale`
/// pixels wide.
inline void draw_ascii(Image& img, int x, int y, const std::string& text, int scale) {
  struct Vertex {
    float x, y, z;
    unsigned char color[4];
  };
  std::vector<Vertex> quads(text.size() * 64 + 64);
  const int n = stb_easy_font_print(0, 0, const_cast<char*>(text.c_str()), nullptr, quads.data(),
                                    int(quads.size() * sizeof(Vertex)));
  for (int q = 0; q < n; ++q) {
    const Vertex* v = &quads[size_t(q) * 4];
    img.fill(x + int(v[0].x) * scale, y + int(v[0].y) * scale, x + int(v[2].x) * scale,
             y + int(v[2].y) * scale, 0, 0, 0);
  }
}

/// Labels in the font when there is one, else in ASCII (ascii_fallback turns a label into text
/// stb_easy_font can draw).
class Labels {
 public:
  Labels(std::string (*ascii_fallback)(const std::string&))
      : font_(Font::find_cjk()), fallback_(ascii_fallback) {}

  bool has_font() const { return font_.ok(); }
  int height() const { return font_.ok() ? kPixels : 7 * kScale; }

  int width(const std::string& text) const {
    if (font_.ok()) return font_.draw(nullptr, 0, 0, text, kPixels);
    return stb_easy_font_width(const_cast<char*>(fallback_(text).c_str())) * kScale;
  }
  void draw(Image& img, int x, int y, const std::string& text) const {
    if (font_.ok())
      font_.draw(&img, x, y, text, kPixels);
    else
      draw_ascii(img, x, y, fallback_(text), kScale);
  }

 private:
  static constexpr int kPixels = 22, kScale = 2;
  Font font_;
  std::string (*fallback_)(const std::string&);
};

/// weights (rows, cols) in [0, 1]: one row per row label, one column per column label. Writes
/// the PNG through a temporary file renamed into place; throws std::runtime_error on failure.
inline void write_png(const std::string& path, const eigenformer::Matrix<float>& weights,
                      const std::vector<std::string>& row_labels,
                      const std::vector<std::string>& col_labels, const Labels& labels) {
  const int cell = 40, pad = 8;
  int left = 0, top = 0;
  for (const auto& l : row_labels) left = std::max(left, labels.width(l));
  const int line = labels.height() + 2;  // column labels run downwards, one character per line
  for (const auto& l : col_labels) top = std::max(top, int(code_points(l).size()) * line);
  left += 2 * pad;
  top += 2 * pad;
  const int rows = int(weights.rows()), cols = int(weights.cols());
  Image img(left + cols * cell + pad, top + rows * cell + pad);
  for (int r = 0; r < rows; ++r) {
    labels.draw(img, pad, top + r * cell + (cell - labels.height()) / 2, row_labels[size_t(r)]);
    for (int c = 0; c < cols; ++c) {
      const float w = std::clamp(weights(r, c), 0.0f, 1.0f);
      const auto shade = [&](float full) { return (unsigned char)(255.0f - w * (255.0f - full)); };
      img.fill(left + c * cell, top + r * cell, left + (c + 1) * cell - 1,
               top + (r + 1) * cell - 1, shade(8), shade(48), shade(107));
    }
  }
  // Column labels: one character per line, read top to bottom, so long words fit narrow columns.
  for (int c = 0; c < cols; ++c) {
    const std::string& label = col_labels[size_t(c)];
    for (size_t i = 0; i < label.size(); ++i) {
      const std::string ch(1, label[i]);
      labels.draw(img, left + c * cell + (cell - labels.width(ch)) / 2, pad + int(i) * line, ch);
    }
  }
  const std::string tmp = path + ".tmp";
  if (!stbi_write_png(tmp.c_str(), img.width, img.height, 3, img.rgb.data(), img.width * 3) ||
      std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error("could not write '" + path + "'");
  }
}

}  // namespace heatmap
