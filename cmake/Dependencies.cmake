# find_package that stops configuration with the Debian package to install.
macro(eigenformer_require_package name version debian_package)
  find_package(${name} ${version} QUIET ${ARGN})
  if(NOT ${name}_FOUND)
    message(FATAL_ERROR
      "eigenformer: ${name} ${version} not found. On Debian/Ubuntu: "
      "sudo apt-get install ${debian_package}")
  endif()
endmacro()
