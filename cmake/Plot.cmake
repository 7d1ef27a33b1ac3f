# eigenformer_plot: PLplot (Debian's libplplot-dev) for examples/common/plot.hpp, the examples'
# --plot training curves. The PNG driver is a run-time plug-in (plplot-driver-cairo), which
# plot::check_ready looks for before training starts.
if(NOT TARGET eigenformer_plot)
  find_package(PkgConfig QUIET)
  if(PkgConfig_FOUND)
    pkg_check_modules(PLPLOT QUIET IMPORTED_TARGET GLOBAL plplot)
  endif()
  if(NOT PLPLOT_FOUND)
    message(FATAL_ERROR "eigenformer: PLplot not found (the examples' --plot). On Debian/Ubuntu: "
                        "sudo apt-get install libplplot-dev plplot-driver-cairo")
  endif()
  add_library(eigenformer_plot INTERFACE)
  target_link_libraries(eigenformer_plot INTERFACE PkgConfig::PLPLOT)
endif()
