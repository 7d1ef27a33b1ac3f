# cmake --install, then find_package(eigenformer) gives eigenformer::eigenformer (and
# eigenformer::precompiled when it was built).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(DIRECTORY include/eigenformer DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS eigenformer EXPORT eigenformerTargets)
# eigenformer::precompiled when asked for (EIGENFORMER_BUILD_PRECOMPILED; build before installing),
# not merely built for the project's own tests and examples, so that installing the headers needs
# no build; and not from a sanitizer build: its objects need the sanitizer runtime.
if(EIGENFORMER_BUILD_PRECOMPILED AND NOT EIGENFORMER_SANITIZE)
  install(TARGETS eigenformer_precompiled EXPORT eigenformerTargets
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
endif()
if(TARGET eigenformer_tokenizer)
  # eigenformer::tokenizer, and the find module its config file uses to bring back PCRE2::8BIT.
  install(TARGETS eigenformer_tokenizer EXPORT eigenformerTargets)
  install(FILES cmake/FindPCRE2.cmake DESTINATION ${CMAKE_INSTALL_DATADIR}/eigenformer/cmake)
endif()
if(TARGET eigenformer_mpi)
  install(TARGETS eigenformer_mpi EXPORT eigenformerTargets)  # eigenformer::mpi
endif()
install(EXPORT eigenformerTargets
  NAMESPACE eigenformer::
  DESTINATION ${CMAKE_INSTALL_DATADIR}/eigenformer/cmake)
configure_package_config_file(cmake/eigenformerConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/eigenformerConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_DATADIR}/eigenformer/cmake)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/eigenformerConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)  # not ARCH_INDEPENDENT: eigenformer::precompiled is a library
install(FILES
  ${CMAKE_CURRENT_BINARY_DIR}/eigenformerConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/eigenformerConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_DATADIR}/eigenformer/cmake)
