# Finds PCRE2's 8-bit library (Debian libpcre2-dev) and defines the imported target PCRE2::8BIT,
# the name PCRE2's own CMake package uses; Debian builds PCRE2 with autotools and ships no CMake
# package, only pkg-config's libpcre2-8.pc. pkg-config, when present, gives the search hints;
# find_path and find_library do the finding, so a machine without pkg-config works too.
# Sets PCRE2_FOUND, PCRE2_INCLUDE_DIR, PCRE2_LIBRARY and PCRE2_VERSION (when pkg-config knows it).
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(PC_PCRE2 QUIET libpcre2-8)
endif()
find_path(PCRE2_INCLUDE_DIR pcre2.h HINTS ${PC_PCRE2_INCLUDE_DIRS})
find_library(PCRE2_LIBRARY NAMES pcre2-8 HINTS ${PC_PCRE2_LIBRARY_DIRS})
set(PCRE2_VERSION ${PC_PCRE2_VERSION})

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(PCRE2 REQUIRED_VARS PCRE2_LIBRARY PCRE2_INCLUDE_DIR
                                  VERSION_VAR PCRE2_VERSION)
mark_as_advanced(PCRE2_INCLUDE_DIR PCRE2_LIBRARY)

if(PCRE2_FOUND AND NOT TARGET PCRE2::8BIT)
  add_library(PCRE2::8BIT UNKNOWN IMPORTED)
  set_target_properties(PCRE2::8BIT PROPERTIES IMPORTED_LOCATION "${PCRE2_LIBRARY}"
                        INTERFACE_INCLUDE_DIRECTORIES "${PCRE2_INCLUDE_DIR}")
endif()
