// Line plots of training curves as PNG, drawn by PLplot (Debian's libplplot-dev, with its cairo
// driver plplot-driver-cairo): one or more panels stacked top to bottom, each with labelled axes,
// one coloured line per series and a legend.
//   plot::Series loss{"training loss", steps, values};
//   plot::write_png("curves.png", "translate", "step", "loss", {loss, valid});
//   plot::write_png("curves.png", {{"losses", "step", "loss", {loss, valid}, true},
//                                  {"accuracy", "step", "%", {accuracy}}}, 900, 720);
// The file is written through a temporary name and renamed into place, so a reader never sees a
// half-written picture.
#pragma once

#include <plplot/plplot.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace plot {

/// One line: its name in the legend and its points (x[i], y[i]).
struct Series {
  std::string name;
  std::vector<double> x, y;
};

/// One pair of axes: its title, axis labels and lines. log_y draws y on a log10 scale when the
/// points span more than a decade (points with y <= 0 are then left out); y_min < y_max fixes the
/// y range (e.g. 0 to 100 for a percentage), else it fits the points.
struct Panel {
  std::string title, x_label, y_label;
  std::vector<Series> series;
  bool log_y = false;
  double y_min = 0, y_max = 0;
};

namespace detail {

/// The points of s as drawn: y as log10(y) on a log scale, without points that cannot be drawn.
inline Series drawn(const Series& s, bool log_y) {
  Series d{s.name, {}, {}};
  for (size_t i = 0; i < s.x.size(); ++i) {
    const double y = log_y ? (s.y[i] > 0 ? std::log10(s.y[i]) : NAN) : s.y[i];
    if (std::isfinite(s.x[i]) && std::isfinite(y)) d.x.push_back(s.x[i]), d.y.push_back(y);
  }
  return d;
}

/// [lo, hi] over every point of every series, widened a little so no line sits on the frame.
inline void range(const std::vector<Series>& series, bool use_x, double& lo, double& hi) {
  lo = std::numeric_limits<double>::infinity();
  hi = -lo;
  for (const Series& s : series)
    for (double v : use_x ? s.x : s.y) lo = std::min(lo, v), hi = std::max(hi, v);
  if (!(lo <= hi)) lo = 0, hi = 1;
  const double pad = hi > lo ? 0.04 * (hi - lo) : 0.5;
  lo -= pad;
  hi += pad;
}

/// Whether the positive y values of the series span more than a decade (PLplot labels a log axis
/// only at powers of ten).
inline bool spans_decade(const std::vector<Series>& series) {
  double lo = std::numeric_limits<double>::infinity(), hi = 0;
  for (const Series& s : series)
    for (double v : s.y)
      if (v > 0 && std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  return hi > 10 * lo;
}

/// PL_POSITION_TOP, or PL_POSITION_BOTTOM when the lines end in the upper half (rising curves).
inline PLINT legend_side(const std::vector<Series>& lines, double y0, double y1) {
  double sum = 0;
  int n = 0;
  for (const Series& s : lines)
    if (!s.y.empty()) sum += s.y.back(), ++n;
  return n > 0 && sum / n > (y0 + y1) / 2 ? PL_POSITION_BOTTOM : PL_POSITION_TOP;
}

/// Draws one panel on the next subpage: axes, labels, lines, legend (right, away from the ends).
inline void draw(const Panel& panel) {
  const bool log_y = panel.log_y && spans_decade(panel.series);
  std::vector<Series> lines;
  for (const Series& s : panel.series) lines.push_back(drawn(s, log_y));
  double x0, x1, y0, y1;
  range(lines, true, x0, x1);
  range(lines, false, y0, y1);
  if (panel.y_min < panel.y_max) y0 = panel.y_min, y1 = panel.y_max;
  plcol0(1);
  plenv(x0, x1, y0, y1, 0, log_y ? 20 : 0);  // 20: logarithmic y axis
  pllab(panel.x_label.c_str(), panel.y_label.c_str(), panel.title.c_str());
  // Distinct colours from PLplot's cmap0 (1 is now black): blue, green, magenta, brown, ...
  const int colours[] = {9, 3, 13, 8, 10, 12};
  std::vector<PLINT> opt, colour, style;
  std::vector<PLFLT> width_px;
  std::vector<const char*> names;
  for (size_t i = 0; i < lines.size(); ++i) {
    const Series& s = lines[i];
    plcol0(colours[i % 6]);
    plwidth(2.0);
    if (s.x.size() == 1) plpoin(1, s.x.data(), s.y.data(), 17);  // a lone point: a dot
    plline(PLINT(s.x.size()), s.x.data(), s.y.data());
    opt.push_back(PL_LEGEND_LINE);
    colour.push_back(colours[i % 6]);
    style.push_back(1);
    width_px.push_back(2.0);
    names.push_back(s.name.c_str());
  }
  plcol0(1);
  PLFLT legend_w, legend_h;
  const PLINT n = PLINT(lines.size());
  std::vector<PLINT> none(lines.size(), 0), one(lines.size(), 1);  // one: also black text
  std::vector<PLFLT> unit(lines.size(), 1.0);
  std::vector<const char*> empty(lines.size(), "");
  pllegend(&legend_w, &legend_h, PL_LEGEND_BACKGROUND | PL_LEGEND_BOUNDING_BOX,
           legend_side(lines, y0, y1) | PL_POSITION_RIGHT | PL_POSITION_INSIDE, 0.02, 0.02, 0.1, 0,
           1, 1, 0, 0, n, opt.data(), 1.0, 1.0, 2.0, 0.0, one.data(), names.data(), none.data(),
           none.data(), unit.data(), unit.data(), colour.data(), style.data(), width_px.data(),
           none.data(), unit.data(), one.data(), empty.data());
}

}  // namespace detail

/// Throws std::runtime_error, before any work is done, if a picture could not be written to path:
/// PLplot has no pngcairo driver (Debian's plplot-driver-cairo is missing) or path's directory
/// does not exist.
inline void check_ready(const std::string& path) {
  std::vector<const char*> menu(256), names(256);
  const char** menu_ptr = menu.data();
  const char** names_ptr = names.data();
  int n = 256;  // in: room in the arrays; out: drivers found
  plgDevs(&menu_ptr, &names_ptr, &n);
  bool found = false;
  for (int i = 0; i < n; ++i) found = found || std::string(names[size_t(i)]) == "pngcairo";
  if (!found)
    throw std::runtime_error("cannot plot to '" + path +
                             "': PLplot has no pngcairo driver "
                             "(sudo apt-get install plplot-driver-cairo)");
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!dir.empty() && !std::filesystem::is_directory(dir, ec))
    throw std::runtime_error("cannot plot to '" + path + "': directory '" + dir.string() +
                             "' does not exist");
}

/// Writes panels stacked top to bottom into one PNG of width x height pixels. Throws
/// std::runtime_error naming the file if a series has unequal numbers of x and y values,
/// no series has a point, or the picture cannot be written.
inline void write_png(const std::string& path, const std::vector<Panel>& panels, int width,
                      int height) {
  bool any = false;
  for (const Panel& p : panels)
    for (const Series& s : p.series) {
      if (s.x.size() != s.y.size())
        throw std::runtime_error("plot::write_png: series '" + s.name + "' has " +
                                 std::to_string(s.x.size()) + " x and " +
                                 std::to_string(s.y.size()) + " y values");
      any = any || !s.x.empty();
    }
  if (!any) throw std::runtime_error("plot::write_png: '" + path + "': nothing to plot");
  check_ready(path);
  const std::string tmp = path + ".tmp";
  plsdev("pngcairo");
  plsfnam(tmp.c_str());
  plsetopt("geometry", (std::to_string(width) + "x" + std::to_string(height)).c_str());
  plscolbg(255, 255, 255);  // white page, black frame and text
  plscol0(1, 0, 0, 0);
  plssub(1, PLINT(panels.size()));
  plinit();
  for (const Panel& p : panels) detail::draw(p);
  plend();
  std::error_code ec;
  if (std::filesystem::file_size(tmp, ec) == 0 || ec ||
      std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error("plot::write_png: cannot write '" + path + "'");
  }
}

/// Writes series as lines on one pair of axes (width x height pixels); throws as the panel form.
inline void write_png(const std::string& path, const std::string& title, const std::string& x_label,
                      const std::string& y_label, const std::vector<Series>& series,
                      int width = 900, int height = 560) {
  write_png(path, {Panel{title, x_label, y_label, series}}, width, height);
}

}  // namespace plot
