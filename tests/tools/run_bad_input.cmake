# Runs one bad-input case of bad_inputs.txt: cuboid must exit with 2 (bad input), print nothing but its one-line
# "cuboid: error: ..." / "cuboid: infeasible: ..." message on stderr, and the message must contain every expected
# substring (the file or flag, the field, the value, what is valid).
# Invoked by ctest: cmake -DCUBOID=... -DROOT=... -DARGS="..." -DEXPECT="a | b | c" -P run_bad_input.cmake
separate_arguments(arg_list UNIX_COMMAND "${ARGS}")
execute_process(COMMAND ${CUBOID} ${arg_list}
  WORKING_DIRECTORY ${ROOT}
  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc TIMEOUT 60)
set(report "cuboid ${ARGS}\nexit: ${rc}\n--- stdout\n${out}--- stderr\n${err}")
if(NOT rc STREQUAL "2")
  message(FATAL_ERROR "expected exit code 2 (bad input), got ${rc}\n${report}")
endif()
if(NOT err MATCHES "^cuboid: (error|infeasible): [^\n]+\n$")
  message(FATAL_ERROR "expected one 'cuboid: error: ...' or 'cuboid: infeasible: ...' line on stderr\n${report}")
endif()
set(rest "${EXPECT}")
while(NOT rest STREQUAL "")
  string(FIND "${rest}" "|" bar)
  if(bar EQUAL -1)
    set(item "${rest}")
    set(rest "")
  else()
    string(SUBSTRING "${rest}" 0 ${bar} item)
    math(EXPR after "${bar} + 1")
    string(SUBSTRING "${rest}" ${after} -1 rest)
  endif()
  string(STRIP "${item}" item)
  if(NOT item STREQUAL "")
    string(FIND "${err}" "${item}" found)
    if(found EQUAL -1)
      message(FATAL_ERROR "the message lacks \"${item}\"\n${report}")
    endif()
  endif()
endwhile()
