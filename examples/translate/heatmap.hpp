// A PNG heat map of attention weights with text labels, drawn with stb_easy_font (ASCII glyphs as
// rectangles) and written with stb_image_write (Debian's libstb-dev).
#pragma once

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include <eigenformer/core/tensor.hpp>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_easy_font.h>
#include <stb/stb_image_write.h>

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
};

/// Draws ASCII text with its top-left corner at (x, y), each font pixel `scale` pixels wide.
inline void draw_text(Image& img, int x, int y, const std::string& text, int scale) {
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

inline int text_width(const std::string& text, int scale) {
  return stb_easy_font_width(const_cast<char*>(text.c_str())) * scale;
}

/// weights (rows, cols) in [0, 1]: one row per row label, one column per column label.
/// Writes the PNG through a temporary file renamed into place; throws std::runtime_error on
/// failure.
inline void write_png(const std::string& path, const eigenformer::Matrix<float>& weights,
                      const std::vector<std::string>& row_labels,
                      const std::vector<std::string>& col_labels) {
  const int cell = 40, scale = 2, pad = 8;
  int left = 0, top = 0;
  for (const auto& l : row_labels) left = std::max(left, text_width(l, scale));
  const int line = 9 * scale;  // column labels run downwards, one character per line
  for (const auto& l : col_labels) top = std::max(top, int(l.size()) * line);
  left += 2 * pad;
  top += 2 * pad;
  const int rows = int(weights.rows()), cols = int(weights.cols());
  Image img(left + cols * cell + pad, top + rows * cell + pad);
  for (int r = 0; r < rows; ++r) {
    draw_text(img, pad, top + r * cell + cell / 2 - 3 * scale, row_labels[size_t(r)], scale);
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
    for (size_t i = 0; i < label.size(); ++i)
      draw_text(img, left + c * cell + cell / 2 - 3 * scale, pad + int(i) * line,
                std::string(1, label[i]), scale);
  }
  const std::string tmp = path + ".tmp";
  if (!stbi_write_png(tmp.c_str(), img.width, img.height, 3, img.rgb.data(), img.width * 3) ||
      std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error("could not write '" + path + "'");
  }
}

}  // namespace heatmap
