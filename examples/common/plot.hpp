// Line plots of training curves as PNG, drawn by PLplot (Debian's libplplot-dev, with its cairo
// driver plplot-driver-cairo): labelled axes, one coloured line per series, a legend.
//   plot::Series loss{"training loss", steps, values};
//   plot::write_png("curves.png", "translate", "step", "loss", {loss, valid});
// The file is written through a temporary name and renamed into place, so a reader never sees a
// half-written picture.
#pragma once

#include <plplot/plplot.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
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

namespace detail {

/// [lo, hi] over every point of every series, widened a little so no line sits on the frame.
inline void range(const std::vector<Series>& series, bool use_x, double& lo, double& hi) {
  lo = std::numeric_limits<double>::infinity();
  hi = -lo;
  for (const Series& s : series)
    for (double v : use_x ? s.x : s.y)
      if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  if (!(lo <= hi)) lo = 0, hi = 1;
  const double pad = hi > lo ? 0.04 * (hi - lo) : 0.5;
  lo -= pad;
  hi += pad;
}

}  // namespace detail

/// Writes series as lines on one pair of axes (width x height pixels). Throws std::runtime_error
/// naming the file if no series has a point, or if the picture cannot be written.
inline void write_png(const std::string& path, const std::string& title, const std::string& x_label,
                      const std::string& y_label, const std::vector<Series>& series,
                      int width = 900, int height = 560) {
  bool any = false;
  for (const Series& s : series) {
    if (s.x.size() != s.y.size())
      throw std::runtime_error("plot::write_png: series '" + s.name + "' has " +
                               std::to_string(s.x.size()) + " x and " +
                               std::to_string(s.y.size()) + " y values");
    any = any || !s.x.empty();
  }
  if (!any) throw std::runtime_error("plot::write_png: '" + path + "': nothing to plot");
  double x0, x1, y0, y1;
  detail::range(series, true, x0, x1);
  detail::range(series, false, y0, y1);
  const std::string tmp = path + ".tmp";
  plsdev("pngcairo");
  plsfnam(tmp.c_str());
  plsetopt("geometry", (std::to_string(width) + "x" + std::to_string(height)).c_str());
  plscolbg(255, 255, 255);  // white page, black frame and text
  plscol0(1, 0, 0, 0);
  plinit();
  plenv(x0, x1, y0, y1, 0, 0);
  pllab(x_label.c_str(), y_label.c_str(), title.c_str());
  // Distinct colours from PLplot's cmap0 (1 is now black): blue, green, magenta, brown, ...
  const int colours[] = {9, 3, 13, 8, 10, 12};
  std::vector<PLINT> opt, colour, style;
  std::vector<PLFLT> width_px;
  std::vector<const char*> names;
  for (size_t i = 0; i < series.size(); ++i) {
    const Series& s = series[i];
    plcol0(colours[i % 6]);
    plwidth(2.0);
    plline(PLINT(s.x.size()), s.x.data(), s.y.data());
    opt.push_back(PL_LEGEND_LINE);
    colour.push_back(colours[i % 6]);
    style.push_back(1);
    width_px.push_back(2.0);
    names.push_back(s.name.c_str());
  }
  plcol0(1);
  PLFLT legend_w, legend_h;
  const PLINT n = PLINT(series.size());
  std::vector<PLINT> none(series.size(), 0), one(series.size(), 1);  // one: also black text
  std::vector<PLFLT> unit(series.size(), 1.0);
  std::vector<const char*> empty(series.size(), "");
  pllegend(&legend_w, &legend_h, PL_LEGEND_BACKGROUND | PL_LEGEND_BOUNDING_BOX, PL_POSITION_TOP |
           PL_POSITION_RIGHT | PL_POSITION_INSIDE, 0.02, 0.02, 0.1, 0, 1, 1, 0, 0, n, opt.data(),
           1.0, 1.0, 2.0, 1.0, one.data(), names.data(), none.data(), none.data(), unit.data(),
           unit.data(), colour.data(), style.data(), width_px.data(), none.data(), unit.data(),
           one.data(), empty.data());
  plend();
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error("plot::write_png: cannot write '" + path + "'");
  }
}

}  // namespace plot
