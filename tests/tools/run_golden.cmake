# Runs one golden CLI case (see golden_cases.txt) and compares "exit code + stdout + stderr" with the expected file.
# Invoked by ctest: cmake -DCUBOID=... -DROOT=... -DNAME=... -DARGS="..." -P run_golden.cmake
separate_arguments(arg_list UNIX_COMMAND "${ARGS}")
execute_process(COMMAND ${CUBOID} ${arg_list}
  WORKING_DIRECTORY ${ROOT}
  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
set(actual "exit: ${rc}\n--- stdout\n${out}--- stderr\n${err}")
set(expected_file ${ROOT}/scenarios/expected/${NAME}.txt)
if(UPDATE)
  file(WRITE ${expected_file} "${actual}")
  message(STATUS "updated ${expected_file} (exit ${rc})")
  return()
endif()
if(NOT EXISTS ${expected_file})
  message(FATAL_ERROR "missing golden file ${expected_file}: run tools/update_golden and review it")
endif()
file(READ ${expected_file} expected)
if(NOT actual STREQUAL expected)
  file(WRITE ${CMAKE_CURRENT_BINARY_DIR}/${NAME}.actual.txt "${actual}")
  execute_process(COMMAND diff -u ${expected_file} ${CMAKE_CURRENT_BINARY_DIR}/${NAME}.actual.txt)
  message(FATAL_ERROR "golden mismatch for '${NAME}' (cuboid ${ARGS}); if intended, run tools/update_golden")
endif()
