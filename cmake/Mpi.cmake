# eigenformer::mpi: the headers plus MPI (MPI::MPI_CXX), for <eigenformer/dist/*.hpp>, the
# data-parallel training helpers. Only those headers include <mpi.h>; the rest of the library
# never needs MPI. Behind EIGENFORMER_MPI (OFF by default): ON without an MPI installation stops
# configuration naming the Debian packages; OFF leaves MPI alone and everything else builds.
option(EIGENFORMER_MPI "Build eigenformer::mpi: data-parallel training on MPI (include/eigenformer/dist/)"
       OFF)
if(EIGENFORMER_MPI)
  find_package(MPI COMPONENTS CXX QUIET)
  if(NOT MPI_CXX_FOUND)
    message(FATAL_ERROR
      "eigenformer: EIGENFORMER_MPI is ON but MPI (C++ bindings of the C API) was not found. "
      "On Debian/Ubuntu: sudo apt-get install libopenmpi-dev openmpi-bin "
      "(or configure with -DEIGENFORMER_MPI=OFF)")
  endif()
  add_library(eigenformer_mpi INTERFACE)
  add_library(eigenformer::mpi ALIAS eigenformer_mpi)
  set_target_properties(eigenformer_mpi PROPERTIES EXPORT_NAME mpi)
  target_link_libraries(eigenformer_mpi INTERFACE eigenformer MPI::MPI_CXX)
endif()
