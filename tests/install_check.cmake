# Installing needs only Eigen and nlohmann-json (issue 20 item 2): a default top-level configure
# with doctest, Google Benchmark and PCRE2 hidden (CMAKE_DISABLE_FIND_PACKAGE_<name>) must succeed
# with the tests and benchmarks switched off, and `cmake --install` must then work without any
# build, installing the headers and the package files.
#   cmake -DSOURCE_DIR=... -DWORK_DIR=... -DGENERATOR=... -P install_check.cmake
file(REMOVE_RECURSE ${WORK_DIR})
execute_process(
  COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${WORK_DIR}/build -G ${GENERATOR}
          -DCMAKE_DISABLE_FIND_PACKAGE_doctest=ON -DCMAKE_DISABLE_FIND_PACKAGE_benchmark=ON
          -DCMAKE_DISABLE_FIND_PACKAGE_PCRE2=ON
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configure without doctest and Google Benchmark failed:\n${out}\n${err}")
endif()
foreach(expected "doctest not found, so the tests are off"
                 "Google Benchmark not found, so the benchmarks are off")
  string(FIND "${out}" "${expected}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "configure did not say '${expected}':\n${out}")
  endif()
endforeach()
execute_process(COMMAND ${CMAKE_COMMAND} --install ${WORK_DIR}/build --prefix ${WORK_DIR}/prefix
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install without a build failed:\n${out}\n${err}")
endif()
foreach(file include/eigenformer/eigenformer.hpp include/eigenformer/model/task_models.hpp
             share/eigenformer/cmake/eigenformerConfig.cmake
             share/eigenformer/cmake/eigenformerTargets.cmake)
  if(NOT EXISTS ${WORK_DIR}/prefix/${file})
    message(FATAL_ERROR "cmake --install did not install ${file}")
  endif()
endforeach()
message(STATUS "installed without doctest, Google Benchmark or a build")
