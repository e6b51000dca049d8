# Registers one ctest case per line of bad_inputs.txt (label bad-input): name | cuboid arguments | expected
# substrings of the error message, separated by '|'. Lines may not contain ';', '[' or ']' (CMake list syntax: a
# bracket would merge lines).
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/bad_inputs.txt)
file(STRINGS ${CMAKE_CURRENT_LIST_DIR}/bad_inputs.txt _bad_lines)
set(_bad_count 0)
foreach(_line IN LISTS _bad_lines)
  if(_line MATCHES "^#" OR NOT _line MATCHES "\\|")
    continue()
  endif()
  if(_line MATCHES ";")
    message(FATAL_ERROR "bad_inputs.txt: ';', '[' or ']' merged lines near: ${_line}")
  endif()
  if(NOT _line MATCHES "^ *([^ |]+) *\\| *([^|]*[^| ]) *\\|(.*)$")
    message(FATAL_ERROR "bad_inputs.txt: cannot parse line: ${_line}")
  endif()
  set(_bad_name ${CMAKE_MATCH_1})
  set(_bad_args "${CMAKE_MATCH_2}")
  set(_bad_expect "${CMAKE_MATCH_3}")
  add_test(NAME bad_input.${_bad_name}
    COMMAND ${CMAKE_COMMAND} -DCUBOID=$<TARGET_FILE:cuboid> -DROOT=${PROJECT_SOURCE_DIR} "-DARGS=${_bad_args}"
            "-DEXPECT=${_bad_expect}" -P ${CMAKE_CURRENT_LIST_DIR}/run_bad_input.cmake)
  set_tests_properties(bad_input.${_bad_name} PROPERTIES LABELS bad-input TIMEOUT 120)
  math(EXPR _bad_count "${_bad_count} + 1")
endforeach()
if(_bad_count LESS 60)
  message(FATAL_ERROR "bad_inputs.txt has ${_bad_count} cases; issue 8 asks for at least 60")
endif()
